"""Fairness metrics of the training rollouts, logged every N steps to a real (offline) W&B run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import demo_dataset

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.labels import DATASET_LABELS
from fair_trl.metrics import compute_fairness
from fair_trl.models import build_tiny_vlm
from fair_trl.rewards import accuracy_reward, format_reward
from fair_trl.rollout_fairness import LOGGED_METRICS, Rollout, fairness_metrics

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_fairness_metrics_flattens_compute_fairness_per_attribute():
    rollouts = [
        Rollout("Nevus", "NV", "ham10000", {"sex": "F", "age": "a2"}),
        Rollout("MEL", "NV", "ham10000", {"sex": "M", "age": "a2"}),
        Rollout(None, "MEL", "ham10000", {"sex": "M", "age": None}),
        Rollout("Benign", "Benign", "isic2020", {"sex": "F", "age": "a4"}),
    ]
    logs = fairness_metrics(rollouts, ["sex", "age"])
    sex = compute_fairness(
        [{"NV"}, {"MEL"}, set(), {"Benign"}],
        ["NV", "NV", "MEL", "Benign"],
        ["ham10000"] * 3 + ["isic2020"],
        ["F", "M", "M", "F"],
        {"ham10000": ["MEL", "NV", "BCC", "AKIEC", "OTHER"], "isic2020": ["Malignant", "Benign"]},
    )
    for name, key in LOGGED_METRICS.items():
        assert logs[f"fairness/sex/{name}"] == pytest.approx(sex[key])
    assert logs["fairness/ham10000/sex/M/f1"] == pytest.approx(sex["per_group"]["ham10000"]["M"]["f1"])
    assert "fairness/isic2020/age/a4/f1" in logs
    # The sample with unknown age is in no age group.
    assert not any(k.startswith("fairness/ham10000/age/None") for k in logs)
    assert fairness_metrics([], ["sex"]) == {}


class RecordingTrainer(FairGRPOTrainer):
    """Keeps what each fairness log was computed from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.windows = []

    def _fairness_logs(self, mode):
        self.windows.append((mode, self.state.global_step, list(self.fairness_log.rollouts[mode])))
        return super()._fairness_logs(mode)


def wandb_history(run_dir: Path) -> list[dict]:
    """History rows of an offline run, read back from its .wandb transaction log by wandb's own reader."""
    (log,) = run_dir.glob("run-*.wandb")
    wandb_cli = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(log)], capture_output=True, text=True, check=True
    ).stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "fair-trl-tests")
    return tmp_path


def test_wandb_offline_run_records_fairness_every_five_steps_and_eval(offline_wandb):
    import wandb

    model, processor = build_tiny_vlm(seed=0)
    config = FairGRPOConfig(
        output_dir=str(offline_wandb / "out"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        learning_rate=5e-3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        max_steps=12,
        logging_steps=3,
        save_strategy="no",
        report_to="wandb",
        run_name="fairness-logging",
        seed=0,
    )
    assert config.fairness_logging_steps == 5
    trainer = RecordingTrainer(
        model=model,
        reward_funcs=[accuracy_reward, format_reward],
        args=config,
        train_dataset=demo_dataset(64, seed=1),
        eval_dataset=(eval_data := demo_dataset(16, seed=2, split="test")),
        processing_class=processor,
    )
    trainer.train()
    metrics = trainer.evaluate()
    run_dir = Path(wandb.run.dir).parent
    wandb.finish()

    # Each training window holds exactly the completions generated since the previous log: 5 steps x 8.
    train_windows = [(step, rollouts) for mode, step, rollouts in trainer.windows if mode == "train"]
    assert [step for step, _ in train_windows] == [5, 10]
    assert all(len(rollouts) == 5 * 8 for _, rollouts in train_windows)
    first = train_windows[0][1]
    assert {r.dataset for r in first} <= set(DATASET_LABELS)
    assert all(set(r.groups) == {"sex", "age"} for r in first)
    assert {r.groups["sex"] for r in first} <= {"F", "M", None}

    history = wandb_history(run_dir)
    fairness_steps = [row["train/global_step"] for row in history if "train/fairness/sex/f1" in row]
    assert fairness_steps == [5, 10]
    logged = next(row for row in history if "train/fairness/sex/f1" in row)
    expected = fairness_metrics(train_windows[0][1], ["sex", "age"])
    for key, value in expected.items():
        assert logged[f"train/{key}"] == pytest.approx(value)
    for attribute in ("sex", "age"):
        for name in LOGGED_METRICS:
            assert 0.0 <= logged[f"train/fairness/{attribute}/{name}"] <= 1.0
    assert any(k.startswith("train/fairness/chexpert/sex/") and k.endswith("/f1") for k in logged)
    # TRL's own metrics keep their logging_steps cadence.
    reward_steps = [row["train/global_step"] for row in history if "train/reward" in row]
    assert reward_steps == [3, 6, 9, 12]

    # evaluate() scores the generations on the eval set and reports them with TRL's eval prefix.
    assert "eval_fairness/sex/f1" in metrics and "eval_fairness/age/eod" in metrics
    eval_window = [rollouts for mode, _, rollouts in trainer.windows if mode == "eval" and rollouts]
    # Every eval prompt is generated num_generations times, as in training.
    assert len(eval_window) == 1 and len(eval_window[0]) == len(eval_data) * 4
    assert any("eval/fairness/sex/f1" in row for row in history)
    # The full results stay on the trainer (a model card's fairness report reads them).
    eval_sex = trainer.fairness_results["eval"]["sex"]
    assert eval_sex["f1"] == pytest.approx(metrics["eval_fairness/sex/f1"])
    assert eval_sex["n"] == len(eval_data) * 4 and eval_sex["per_group"]


def test_fairness_logging_can_be_turned_off(tmp_path):
    model, processor = build_tiny_vlm(seed=0)
    config = FairGRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        max_steps=5,
        save_strategy="no",
        report_to="none",
        fairness_logging_steps=0,
    )
    trainer = FairGRPOTrainer(
        model=model,
        reward_funcs=accuracy_reward,
        args=config,
        train_dataset=demo_dataset(32),
        processing_class=processor,
    )
    trainer.train()
    assert not any(k.startswith("fairness/") for row in trainer.state.log_history for k in row)
    # Nothing is buffered either: with no log to clear it, a long run would grow without bound.
    assert trainer.fairness_log.rollouts["train"] == []
    with pytest.raises(ValueError, match="fairness_logging_steps must be >= 0"):
        FairGRPOConfig(output_dir=str(tmp_path), fairness_logging_steps=-1)
