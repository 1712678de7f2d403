"""FairGRPOTrainer with a PEFT LoRA adapter (`peft_config`): trains, saves an adapter, resumes exactly, says so."""

import json
import os

import pytest
import torch
import yaml
from conftest import demo_dataset, length_reward, text_dataset, trainer_config
from datasets import Dataset
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.checkpoint_io import ESTIMATOR_STATE_FILE
from fair_trl.model_card import adapter_settings
from fair_trl.models import build_tiny_text_model, save_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}


def lora(**overrides):
    values = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    values.update(overrides)
    return LoraConfig(**values)


def split_card(text):
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def base_and_adapter_weights(model):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    adapter = {k: v for k, v in state.items() if "lora_" in k}
    return {k: v for k, v in state.items() if k not in adapter}, adapter


def test_lora_trains_the_text_model_and_saves_an_adapter_with_a_peft_card(text_model_dir, tmp_path):
    trainer = FairGRPOTrainer(
        model=text_model_dir,
        reward_funcs=length_reward,
        args=FairGRPOConfig(**trainer_config(tmp_path, learning_rate=5e-2), advantage_estimator="fair_grpo"),
        train_dataset=text_dataset(),
        peft_config=lora(task_type="CAUSAL_LM"),
    )
    assert isinstance(trainer.model, PeftModel)
    base_before, adapter_before = base_and_adapter_weights(trainer.model)
    trainer.train()
    assert trainer.fair_estimator.step == 3
    base_after, adapter_after = base_and_adapter_weights(trainer.model)
    # Only the adapter trains: LoRA's B matrices start at zero and moved; the base model is frozen.
    assert adapter_before.keys() == adapter_after.keys() and adapter_after
    assert any(not torch.equal(adapter_before[k], adapter_after[k]) for k in adapter_after if "lora_B" in k)
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)

    out = tmp_path / "out"
    trainer.save_model(str(out))
    files = set(os.listdir(out))
    assert files >= ADAPTER_FILES and "model.safetensors" not in files
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all("lora_" in name for name in saved)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == text_model_dir

    # The saved adapter on a freshly loaded base model answers exactly as the trained model does.
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(text_model_dir), str(out)).eval()
    ids = trainer.processing_class("Classify case 3 : Normal or Pneumonia ?", return_tensors="pt")["input_ids"]
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-6)
        with trainer.model.disable_adapter():
            assert not torch.allclose(reloaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-4)

    meta, body = split_card(trainer.write_model_card(dataset_names="synthetic").read_text())
    assert meta["library_name"] == "peft"
    assert {"peft", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local folder is not a Hub model: named in the body instead
    assert f"- **Base model:** `{text_model_dir}`" in body
    assert "- **Adapter:** LoRA (r 4, lora_alpha 8, lora_dropout 0, target_modules " in body
    assert 'PeftModel.from_pretrained(base, "out")' in body


def test_lora_trains_the_tiny_vlm_on_images(tmp_path):
    model_dir = str(save_tiny_model(tmp_path / "vlm", kind="vlm"))
    trainer = FairGRPOTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=FairGRPOConfig(**trainer_config(tmp_path, max_steps=2, learning_rate=5e-2)),
        train_dataset=demo_dataset(num_rows=16),
        peft_config=lora(),
    )
    base_before, adapter_before = base_and_adapter_weights(trainer.model)
    # all-linear reaches the vision tower and the language model alike.
    assert any("vision_tower" in k for k in adapter_before) and any("language_model" in k for k in adapter_before)
    trainer.train()
    assert trainer.fair_estimator.step == 2
    base_after, adapter_after = base_and_adapter_weights(trainer.model)
    assert any(not torch.equal(adapter_before[k], adapter_after[k]) for k in adapter_after)
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    assert set(os.listdir(out)) >= ADAPTER_FILES and "model.safetensors" not in os.listdir(out)
    # transformers loads the base named in adapter_config.json and puts the adapter on it (what `fair-trl audit`
    # does with a saved adapter folder).
    loaded = AutoModelForImageTextToText.from_pretrained(out)
    trained = {k.replace(".default", ""): v for k, v in adapter_after.items()}
    restored = {k.replace(".default", ""): v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert restored.keys() == {k.removeprefix("base_model.model.") for k in trained}
    for key, value in trained.items():
        assert torch.equal(restored[key.removeprefix("base_model.model.")], value), key
    meta, _ = split_card(trainer.write_model_card().read_text())
    assert meta["library_name"] == "peft"


def clustered_dataset(n=32):
    """Two domains; a quarter of the rows without demographics, so the estimator clusters them (its pools)."""
    rows = {"prompt": [], "dataset": [], "sex": [], "age": []}
    for i in range(n):
        rows["prompt"].append([{"role": "user", "content": f"Classify case {i} : Normal or Pneumonia ?"}])
        rows["dataset"].append(["site_a", "site_b"][(i // 3) % 2])
        unknown = i % 4 == 3
        rows["sex"].append(None if unknown else ["F", "M"][i % 2])
        rows["age"].append(None if unknown else ["22", "47", "63", "81"][i % 4])
    return Dataset.from_dict(rows)


def test_lora_resume_continues_exactly_as_the_unbroken_run(text_model_dir, tmp_path):
    def run(resume_from=None):
        trainer = FairGRPOTrainer(
            model=text_model_dir,
            reward_funcs=length_reward,
            args=FairGRPOConfig(
                **trainer_config(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, learning_rate=5e-2),
                advantage_estimator="fair_grpo",
            ),
            train_dataset=clustered_dataset(),
            peft_config=lora(task_type="CAUSAL_LM"),
        )
        trainer.train(resume_from_checkpoint=resume_from)
        return trainer

    unbroken = run()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert set(os.listdir(checkpoint)) >= ADAPTER_FILES and (checkpoint / ESTIMATOR_STATE_FILE).is_file()
    resumed = run(str(checkpoint))

    state = unbroken.fair_estimator.state_dict()
    assert state["step"] == 4 and state["pools"], "no prompt was clustered: the check is weaker than intended"
    assert resumed.fair_estimator.state_dict() == state
    assert resumed.group_keyer.state_dict() == unbroken.group_keyer.state_dict()
    # The adapter came back from the checkpoint: a fresh one (B = 0) trained two steps would end elsewhere.
    _, unbroken_adapter = base_and_adapter_weights(unbroken.model)
    _, resumed_adapter = base_and_adapter_weights(resumed.model)
    assert unbroken_adapter.keys() == resumed_adapter.keys()
    for key, value in unbroken_adapter.items():
        assert torch.equal(resumed_adapter[key], value), key

    def after_checkpoint(trainer):
        skip = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}
        return [{k: v for k, v in e.items() if k not in skip} for e in trainer.state.log_history if e["step"] > 2]

    assert after_checkpoint(resumed) == after_checkpoint(unbroken)


def test_adapter_settings_read_the_peft_config_and_none_for_a_full_model():
    from peft import get_peft_model

    model, _ = build_tiny_text_model(seed=0)
    assert adapter_settings(model) is None
    settings = adapter_settings(get_peft_model(model, lora(target_modules=["q_proj", "v_proj"])))
    assert settings == {
        "type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]
    }  # fmt: skip


@pytest.mark.parametrize("adapter", [None, {"type": "LORA", "r": 16, "lora_alpha": 32}])
def test_card_of_an_adapter_names_peft_and_its_hub_base_model(adapter):
    from fair_trl.model_card import ModelCardRecord, render_model_card

    record = ModelCardRecord(
        base_model="google/medgemma-4b-it",
        method="fair_grpo",
        datasets=["org/clinical-mixture"],
        hyperparameters={"advantage_estimator": "fair_grpo"},
        fairness={},
        hub_model_id="org/FairMedGemma-4B-LoRA",
        adapter=adapter,
    )
    meta, body = split_card(render_model_card(record))
    assert meta["base_model"] == "google/medgemma-4b-it"
    if adapter is None:
        assert meta["library_name"] == "transformers" and "peft" not in meta["tags"]
        assert "PeftModel" not in body and "**Adapter:**" not in body
        return
    assert meta["library_name"] == "peft" and {"peft", "lora"} <= set(meta["tags"])
    assert "- **Adapter:** LoRA (r 16, lora_alpha 32); this repository holds the adapter only" in body
    assert 'base = AutoModelForImageTextToText.from_pretrained("google/medgemma-4b-it")' in body
    assert 'model = PeftModel.from_pretrained(base, "org/FairMedGemma-4B-LoRA")' in body
