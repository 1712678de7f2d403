"""What the test files share: the tiny offline models, small datasets, a TRL config and recording trainers."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from datasets import Dataset

from fair_trl import FairGRPOTrainer
from fair_trl.models import save_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The vLLM tests need vLLM, which only `make test-vllm`'s environment has.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["test_vllm.py"]


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory) -> str:
    """The tiny text model saved once for the whole session (trainers load it by path, like a Hub id)."""
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "text", kind="text"))


def per_completion(values, g):
    """Per-prompt values repeated for each of the prompt's g completions (TRL's layout)."""
    return [v for v in values for _ in range(g)]


def length_reward(completions, **_):
    # Varies across rollouts even for a random model, so advantages are non-zero and weights move.
    return [min(len(c if isinstance(c, str) else c[-1]["content"]), 40) / 40 for c in completions]


def text_dataset(n=32, seed=0):
    """Text prompts over three domains with mixed, partly missing and partly invalid demographics."""
    rng = np.random.default_rng(seed)
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"Classify case {i} : Normal or Pneumonia ?"}] for i in range(n)],
            "dataset": [str(rng.choice(["chexpert", "chexpert", "ham10000", "covid_blues"])) for _ in range(n)],
            "sex": [[None, "F", "M", "unknown", "female"][i % 5] for i in range(n)],
            "age": [[None, "22", "053Y", "80", "-5", "40"][i % 6] for i in range(n)],
        }
    )


def demo_dataset(num_rows: int = 512, seed: int = 0, split: str = "train") -> Dataset:
    """Rows of the synthetic benchmark (prompt, image, solution, dataset, patient_id, age, sex)."""
    from fair_trl.data import build_dataset

    return build_dataset("synthetic", None, num_rows=num_rows, seed=seed)[split]


def trainer_config(tmp_path, **overrides) -> dict:
    """FairGRPOConfig / GRPOConfig keyword arguments for a few quick CPU steps (8 rows = 2 prompts x 4)."""
    values = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        learning_rate=1e-3,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=7,
        gradient_checkpointing=False,
    )
    values.update(overrides)
    return values


class RecordingTrainer(FairGRPOTrainer):
    """Keeps what `_compute_advantages` returned, to compare with what TRL trained on and logged."""

    def _compute_advantages(self, rewards, inputs):
        advantages = super()._compute_advantages(rewards, inputs)
        self.recorded = getattr(self, "recorded", []) + [(rewards.clone(), advantages.clone())]
        return advantages

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.trained_on = getattr(self, "trained_on", []) + [output["advantages"].clone()]
        return output
