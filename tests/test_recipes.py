"""recipes/: the paper's values in the YAMLs, every recipe parses, and the CPU smoke run end to end."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from fair_trl.advantages import REGISTRY
from fair_trl.config import FairGRPOConfig
from fair_trl.model_card import INDEX_METRICS

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
MODEL_YAMLS = {"google/medgemma-4b-it": RECIPES / "fairmedgemma.yaml", "Qwen/Qwen2.5-VL-7B-Instruct": RECIPES /
               "qwen2_5_vl_7b.yaml"}  # fmt: skip
METHOD_YAMLS = sorted((RECIPES / "methods").glob("*.yaml"))
# The keys a method file may change relative to recipes/fairmedgemma.yaml: the method, its sampler, its
# estimator's own config fields (its registry entry) and the run's names.
METHOD_KEYS = {"advantage_estimator", "balanced_sampling", "output_dir", "run_name"}.union(
    *(spec.config_fields(FairGRPOConfig) for spec in REGISTRY.values())
)
EXPECTED_METHODS = {
    "grpo": {"advantage_estimator": "grpo"},
    "rloo": {"advantage_estimator": "rloo"},
    "reinforce_pp": {"advantage_estimator": "reinforce_pp"},
    "grpo_resampling": {"advantage_estimator": "grpo", "balanced_sampling": True},
    "grpo_group_dro": {"advantage_estimator": "group_dro", "dro_step_size": 0.01},
    "fair_grpo": {"advantage_estimator": "fair_grpo"},
    "fair_grpo_nd": {"advantage_estimator": "fair_grpo_nd"},
}

# Table 3 of the paper, on its 4 GPUs.
GPUS = 4
PROMPTS_PER_STEP = 512
MINI_BATCH_PROMPTS = 128
MICRO_BATCH_PER_GPU = 4
ROLLOUTS = 10


def load(path):
    return yaml.safe_load(Path(path).read_text())


def recipe_module():
    spec = importlib.util.spec_from_file_location("fairmedgemma_recipe", RECIPES / "fairmedgemma.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", list(MODEL_YAMLS))
def test_model_yaml_holds_table_3(model):
    c = load(MODEL_YAMLS[model])
    assert c["model_name_or_path"] == model
    assert c["advantage_estimator"] == "fair_grpo"
    assert c["num_generations"] == ROLLOUTS
    assert c["learning_rate"] == 5e-7
    assert c["beta"] == 0.0
    assert (c["use_vllm"], c["vllm_mode"]) == (True, "colocate")
    assert c["vllm_tensor_parallel_size"] == 2
    assert c["vllm_gpu_memory_utilization"] == 0.6
    assert c["max_completion_length"] == 4096
    assert c["vllm_max_model_length"] == 4096 + 4096  # prompt + response
    assert c["num_train_epochs"] == 15
    assert c["bf16"] is True
    assert c["report_to"] == "wandb"
    # Batch: micro-batch 4 per GPU; a PPO mini-batch of 128 prompts per optimizer step; 512 prompts per
    # rollout batch; one pass over it.
    assert c["per_device_train_batch_size"] == MICRO_BATCH_PER_GPU
    assert MICRO_BATCH_PER_GPU * GPUS * c["gradient_accumulation_steps"] == MINI_BATCH_PROMPTS * ROLLOUTS
    assert MICRO_BATCH_PER_GPU * GPUS * c["steps_per_generation"] == PROMPTS_PER_STEP * ROLLOUTS
    assert c["num_iterations"] == 1
    trl_steps_per_paper_step = c["steps_per_generation"] // c["gradient_accumulation_steps"]
    assert trl_steps_per_paper_step == PROMPTS_PER_STEP // MINI_BATCH_PROMPTS
    # Checkpoint every 20 paper steps; validation every 5 of the 15 epochs on 512 prompts.
    assert (c["save_strategy"], c["save_steps"]) == ("steps", 20 * trl_steps_per_paper_step)
    assert c["eval_strategy"] == "steps" and c["eval_steps"] == pytest.approx(5 / 15, abs=1e-9)
    assert c["per_device_eval_batch_size"] * GPUS * c["num_generations_eval"] == PROMPTS_PER_STEP


def test_model_yamls_differ_only_in_the_model_and_names():
    medgemma, qwen = (load(p) for p in MODEL_YAMLS.values())
    changed = {k for k in medgemma.keys() | qwen.keys() if medgemma.get(k) != qwen.get(k)}
    assert changed == {"model_name_or_path", "output_dir", "run_name"}


def test_method_yamls_are_fairmedgemma_with_another_method():
    base = load(RECIPES / "fairmedgemma.yaml")
    assert {p.stem for p in METHOD_YAMLS} == set(EXPECTED_METHODS)
    # Every registered method has a recipe.
    assert {load(p)["advantage_estimator"] for p in METHOD_YAMLS} == set(REGISTRY)
    for path in METHOD_YAMLS:
        config = load(path)
        changed = {k for k in base.keys() | config.keys() if base.get(k) != config.get(k)}
        assert changed <= METHOD_KEYS, (path.name, changed - METHOD_KEYS)
        for key, value in EXPECTED_METHODS[path.stem].items():
            assert config[key] == value, (path.name, key)
        assert config.get("balanced_sampling", False) == (path.stem == "grpo_resampling")


def recipe_yamls():
    return list(MODEL_YAMLS.values()) + METHOD_YAMLS


@pytest.mark.parametrize("path", recipe_yamls(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_trl_parser_reads_recipe(path):
    # --use_cpu: bf16 is only accepted on this GPU-less machine with it.
    script_args, training_args, model_args = (
        recipe_module().make_parser().parse_args_and_config(["--config", str(path), "--use_cpu", "true"])
    )
    config = load(path)
    assert isinstance(training_args, FairGRPOConfig)
    assert training_args.advantage_estimator == config["advantage_estimator"]
    assert training_args.balanced_sampling == config.get("balanced_sampling", False)
    assert training_args.learning_rate == 5e-7 and training_args.num_generations == 10
    assert training_args.steps_per_generation == config["steps_per_generation"]
    assert model_args.model_name_or_path == config["model_name_or_path"]
    assert script_args.dataset_name == config["dataset_name"]


@pytest.mark.parametrize("name", ["zero3", "fsdp", "multi_node_zero3"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(RECIPES / "accelerate" / f"{name}.yaml"))
    assert config.mixed_precision == "bf16"
    assert config.num_processes == (8 if name.startswith("multi_node") else GPUS)


def test_recipe_loads_a_built_dataset_directory(tmp_path):
    from fair_trl.data.loading import build_and_save

    build_and_save("synthetic", None, tmp_path / "built", progress=False, num_rows=60)
    module = recipe_module()
    args = module.FairMedGemmaScriptArguments(dataset_name=str(tmp_path / "built"))
    train, test, name = module.load_splits(args, seed=0)
    assert len(train) + len(test) == 60
    assert name == "synthetic (built with fair-trl build-dataset)"
    with pytest.raises(ValueError, match="dataset_name is required"):
        module.load_splits(module.FairMedGemmaScriptArguments(), seed=0)


def tool(name):
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name)


def run_recipe_on_tiny_vlm(root: Path, *options: str) -> Path:
    """recipes/fairmedgemma.py launched as recipes/README.md's CPU smoke run, plus `options`; returns its output dir."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    subprocess.run([tool("fair-trl"), "tiny-model", str(root / "tiny"), "--kind", "vlm"], check=True, env=env)
    out = root / "out"
    command = [
        tool("accelerate"), "launch", "--cpu", "--num_processes", "1",
        "recipes/fairmedgemma.py", "--config", "recipes/fairmedgemma.yaml",
        "--model_name_or_path", str(root / "tiny"), "--dataset_name", "synthetic", "--use_vllm", "false",
        "--max_steps", "2", "--report_to", "none", "--output_dir", str(out), "--bf16", "false",
        "--push_to_hub", "false", *options,
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The CPU smoke run of recipes/README.md: a tiny MedGemma-architecture VLM, the synthetic benchmark."""
    # The issue's command, so Table 3's full batch shape (1280 completions per process, 80 accumulation
    # steps per optimizer step) runs: a few minutes of CPU even for the tiny model. The final audit answers
    # the test split greedily; at max_completion_length (4096) a random model that rarely stops would take
    # minutes of CPU more.
    return run_recipe_on_tiny_vlm(tmp_path_factory.mktemp("smoke"), "--audit_max_new_tokens", "64")


def test_smoke_writes_model_processor_and_card(smoke):
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"):
        assert (smoke / name).is_file(), name
    from transformers import AutoModelForImageTextToText, AutoProcessor

    AutoModelForImageTextToText.from_pretrained(smoke)
    AutoProcessor.from_pretrained(smoke)


def test_smoke_card_has_metadata_and_fairness_tables(smoke):
    text = (smoke / "README.md").read_text()
    front, body = text[4:].split("\n---\n", 1)
    meta = yaml.safe_load(front)
    (index,) = meta["model-index"]
    configs = {m["config"] for m in index["results"][0]["metrics"]}
    assert configs == {"sex", "age"}
    assert "base_model" not in meta  # a local directory is not a Hub model
    assert "**FairGRPO**" in body
    assert "### Summary (Table 2 style)" in body
    assert "### Per dataset and sex group" in body and "### Per dataset and age group" in body
    assert "| learning_rate | 5e-07 |" in body and "| num_generations | 10 |" in body
    assert "**Optimizer steps trained:** 2" in body
    assert len(ModelCard(text).data.eval_results) == len(INDEX_METRICS) * 2


def test_recipe_trains_and_audits_a_lora_adapter(tmp_path):
    """`--use_peft true` on the tiny Gemma 3 (no default LoRA targets in PEFT: the recipe picks all-linear): the
    output is an adapter, the final audit loads it onto its base model, and the card says it is a PEFT adapter."""
    out = run_recipe_on_tiny_vlm(
        tmp_path,
        *("--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--synthetic_num_rows", "64"),
        # The fast shape of recipes/README.md, short answers and no mid-run evaluation: a smoke test of the wiring.
        *("--gradient_accumulation_steps", "5", "--steps_per_generation", "20", "--max_completion_length", "8"),
        *("--eval_strategy", "no", "--audit_max_new_tokens", "8", "--audit_bootstrap", "10"),
    )
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "processor_config.json", "README.md"} <= files
    assert "model.safetensors" not in files
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == str(tmp_path / "tiny")
    assert {"q_proj", "fc1"} <= set(adapter["target_modules"])  # all-linear: the language model and SigLIP tower
    assert (out / "audit" / "report.md").is_file() and (out / "audit" / "predictions.jsonl").is_file()
    meta = yaml.safe_load((out / "README.md").read_text()[4:].split("\n---\n", 1)[0])
    assert meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert {m["config"] for m in meta["model-index"][0]["results"][0]["metrics"]} == {"sex", "age"}
