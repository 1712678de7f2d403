"""Model cards with the fairness report: rendered offline; the push path with the Hub client faked."""

import os
from pathlib import Path

import pytest
import yaml
from conftest import demo_dataset
from huggingface_hub import ModelCard

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.evaluate import markdown_report
from fair_trl.metrics import compute_fairness
from fair_trl.model_card import INDEX_METRICS, ModelCardRecord, card_hyperparameters, render_model_card
from fair_trl.models import build_tiny_vlm
from fair_trl.rewards import accuracy_reward, format_reward

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAM = ["MEL", "NV", "BCC", "AKIEC", "OTHER"]
ISIC = ["Malignant", "Benign"]


def fairness_results():
    """compute_fairness output for sex and age on a small hand-made set of answers."""
    predictions = [{"NV"}, {"MEL"}, {"NV"}, set(), {"BCC"}, {"Benign"}, {"Malignant"}, {"Benign"}]
    references = ["NV", "NV", "NV", "MEL", "BCC", "Benign", "Benign", "Malignant"]
    datasets = ["ham10000"] * 5 + ["isic2020"] * 3
    sex = ["F", "M", "F", "M", None, "F", "M", "M"]
    age = ["a2", "a3", "a4", "a2", "a3", "a1", "a3", None]
    classes = {"ham10000": HAM, "isic2020": ISIC}
    return {
        "sex": compute_fairness(predictions, references, datasets, sex, classes),
        "age": compute_fairness(predictions, references, datasets, age, classes),
    }


def split_card(text):
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def render(**overrides):
    values = dict(
        base_model="google/medgemma-4b-it",
        method="fair_grpo",
        datasets=["org/clinical-mixture"],
        hyperparameters={"advantage_estimator": "fair_grpo", "learning_rate": 5e-7, "num_generations": 10},
        fairness=fairness_results(),
        hub_model_id="org/FairMedGemma-4B",
        eval_dataset="org/clinical-mixture",
    )
    values.update(overrides)
    return render_model_card(ModelCardRecord(**values))


def test_front_matter_is_hub_metadata_with_a_model_index_per_attribute():
    results = fairness_results()
    meta, _ = split_card(render(fairness=results))
    assert meta["base_model"] == "google/medgemma-4b-it"
    assert meta["datasets"] == ["org/clinical-mixture"]
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert {"fair-trl", "trl", "fairgrpo", "fairness"} <= set(meta["tags"])
    (index,) = meta["model-index"]
    assert index["name"] == "FairMedGemma-4B"
    (entry,) = index["results"]
    assert entry["dataset"] == {"name": "org/clinical-mixture", "type": "org/clinical-mixture", "split": "test"}
    metrics = {(m["config"], m["type"]): m for m in entry["metrics"]}
    assert len(metrics) == len(INDEX_METRICS) * 2
    for attribute, result in results.items():
        for metric_type, key, _ in INDEX_METRICS:
            assert metrics[(attribute, metric_type)]["value"] == pytest.approx(result[key], abs=1e-4)
    assert metrics[("age", "eod")]["name"] == "EOD (age groups)"


def test_card_parses_with_huggingface_hub():
    card = ModelCard(render())
    assert card.data.base_model == "google/medgemma-4b-it"
    assert len(card.data.eval_results) == len(INDEX_METRICS) * 2
    assert {r.metric_config for r in card.data.eval_results} == {"sex", "age"}


def test_body_carries_the_evaluate_tables_and_the_hyperparameters():
    results = fairness_results()
    _, body = split_card(render(fairness=results))
    # The same tables `fair-trl evaluate --markdown` writes for these results.
    report = markdown_report({"attributes": results, "samples": 8, "skipped_lines": [], "no_valid_label": 1})
    tables = report.split("\n8 samples")[0].strip()
    assert tables in body
    assert "### Summary (Table 2 style)" in body
    assert "### Per dataset and sex group" in body and "### Per dataset and age group" in body
    assert "| learning_rate | 5e-07 |" in body
    assert "| num_generations | 10 |" in body
    assert "**FairGRPO**" in body and "[google/medgemma-4b-it](https://huggingface.co/google/medgemma-4b-it)" in body
    assert "1 answers with unknown sex are left out of its groups." in body


def test_local_base_model_and_local_data_stay_out_of_the_metadata():
    meta, body = split_card(
        render(base_model="/tmp/tiny-vlm", datasets=["synthetic"], hub_model_id=None, eval_dataset="synthetic")
    )
    assert "base_model" not in meta and "datasets" not in meta
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "synthetic"
    assert "`/tmp/tiny-vlm`" in body


def test_card_without_evaluation_says_so_and_has_no_model_index():
    meta, body = split_card(render(fairness=None))
    assert "model-index" not in meta
    assert "No evaluation has been run yet" in body
    assert "Summary (Table 2 style)" not in body


@pytest.mark.parametrize(
    ("method", "extra", "name"),
    [
        ("grpo", {}, "GRPO"),
        ("grpo", {"sampler": "balanced"}, "GRPO + Resampling"),
        ("group_dro", {}, "GRPO + Group DRO"),
        ("fair_grpo_nd", {}, "FairGRPO-ND"),
        ("rloo", {}, "RLOO"),
        ("reinforce_pp", {}, "REINFORCE++"),
    ],
)
def test_method_names(method, extra, name):
    _, body = split_card(render(method=method, hyperparameters={"advantage_estimator": method}, **extra))
    assert f"fine-tuned with **{name}**" in body


def tiny_trainer(tmp_path, **overrides):
    model, processor = build_tiny_vlm()
    values = dict(
        output_dir=str(tmp_path / "FairMedGemma-tiny"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        max_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
    )
    values.update(overrides)
    return FairGRPOTrainer(
        model=model,
        reward_funcs=[accuracy_reward, format_reward],
        args=FairGRPOConfig(**values),
        train_dataset=demo_dataset(num_rows=64),
        processing_class=processor,
    )


def test_write_model_card_reads_the_trainer(tmp_path):
    trainer = tiny_trainer(tmp_path)
    trainer.fairness_results["eval"] = fairness_results()
    path = trainer.write_model_card(dataset_names="synthetic")
    assert path == Path(trainer.args.output_dir) / "README.md"
    meta, body = split_card(path.read_text())
    assert meta["model-index"][0]["name"] == "FairMedGemma-tiny"
    assert "**FairGRPO**" in body and "| per_device_train_batch_size | 8 |" in body
    assert "| prompts per optimizer step | 2 |" in body
    assert "**Training rows per domain:** chexpert" in body
    hyper = card_hyperparameters(trainer.args)
    assert hyper["prompts per rollout batch"] == 2 and "vllm_mode" not in hyper


def test_write_model_card_keeps_local_names_out_of_the_metadata(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mixture").mkdir(parents=True)
    trainer = tiny_trainer(tmp_path)
    trainer.fairness_results["eval"] = fairness_results()
    meta, body = split_card(trainer.write_model_card(dataset_names=["data/mixture", "org/hub-data"]).read_text())
    assert meta["datasets"] == ["org/hub-data"]
    assert "base_model" not in meta  # the tiny model was built in memory, not loaded from the Hub
    assert "**Data:** data/mixture, org/hub-data" in body


class FakeHub:
    """Stands in for transformers' Hub client: records what would be created and uploaded."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append(repo_id)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        self.uploads.append({"repo_id": repo_id, "files": files, "card": (folder / "README.md").read_text()})


@pytest.mark.skipif(
    "create_model_card" not in FairGRPOTrainer.__dict__,
    reason="needs FairGRPOTrainer.create_model_card to write the fairness card (TRL's own would replace it)",
)
def test_push_to_hub_uploads_model_processor_and_fairness_card(tmp_path, monkeypatch):
    import transformers.trainer

    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    trainer = tiny_trainer(tmp_path, hub_model_id="org/FairMedGemma-4B")
    trainer.fairness_results["eval"] = fairness_results()
    trainer.push_to_hub(dataset_name="synthetic")
    assert hub.repos == ["org/FairMedGemma-4B"]
    (upload,) = hub.uploads
    assert upload["repo_id"] == "org/FairMedGemma-4B"
    assert {"model.safetensors", "config.json", "processor_config.json", "tokenizer.json", "README.md"} <= upload[
        "files"
    ]
    meta, body = split_card(upload["card"])
    assert meta["model-index"][0]["name"] == "FairMedGemma-4B"
    assert "### Summary (Table 2 style)" in body
    assert "[org/FairMedGemma-4B](https://huggingface.co/org/FairMedGemma-4B)" in body
