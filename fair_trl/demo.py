"""The embedded default job: a short FairGRPO run of the tiny VLM on generated image rows.

Offline and CPU-only. Rows carry a 32x32 image whose brightness decides the label, a domain with a
skewed mix, and sex/age columns with gaps, so every part of the FairGRPO path runs (explicit groups,
latent groups for rows with no demographics, domain temperatures). The run prints the mean reward
per demographic group early and late in training.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from fair_trl.groups import GroupKeyer

# Two labels per domain, each a single word in the tiny tokenizer's vocabulary.
DOMAIN_LABELS = {"chexpert": ("Normal", "Pneumonia"), "ham10000": ("NV", "MEL"), "covid_blues": ("Normal", "COVID")}
DOMAIN_SHARE = (0.6, 0.25, 0.15)
INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)


def make_demo_dataset(num_rows: int = 256, seed: int = 0) -> Dataset:
    """Generated multimodal rows in the project's schema (prompt, image, solution, dataset, age, sex)."""
    rng = np.random.default_rng(seed)
    domains = list(DOMAIN_LABELS)
    rows: dict[str, list] = defaultdict(list)
    for _ in range(num_rows):
        domain = domains[rng.choice(len(domains), p=DOMAIN_SHARE)]
        label_index = int(rng.integers(2))
        label = DOMAIN_LABELS[domain][label_index]
        level = 60 + 120 * label_index + rng.normal(0, 25, size=(32, 32, 3))
        image = PILImage.fromarray(np.clip(level, 0, 255).astype(np.uint8))
        options = " , ".join(DOMAIN_LABELS[domain])
        rows["prompt"].append(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": f"Classify the image . Options : {options} . {INSTRUCTION}"},
                    ],
                }
            ]
        )
        rows["image"].append(image)
        rows["solution"].append(label)
        rows["dataset"].append(domain)
        rows["age"].append(None if rng.random() < 0.15 else int(rng.choice([22, 40, 63, 82], p=[0.1, 0.4, 0.4, 0.1])))
        rows["sex"].append(None if rng.random() < 0.1 else str(rng.choice(["F", "M"])))
    features = Features(
        {
            "prompt": [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}],
            "image": Image(),
            "solution": Value("string"),
            "dataset": Value("string"),
            "age": Value("int32"),
            "sex": Value("string"),
        }
    )
    return Dataset.from_dict(dict(rows), features=features)


@dataclass
class RewardLog:
    """Rewards per (step, group), filled by the reward function the trainer calls."""

    keyer: GroupKeyer
    records: list[tuple[int, str, float]]

    def accuracy_reward(self, completions, solution, sex, age, trainer_state, **_) -> list[float]:
        rewards = []
        for completion, answer, s, a in zip(completions, solution, sex, age, strict=True):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            reward = 1.0 if answer.lower() in text.lower().split() else 0.0
            group = self.keyer.key({"sex": s, "age": a}) or "unknown"
            self.records.append((trainer_state.global_step, group, reward))
            rewards.append(reward)
        return rewards


def run_demo(
    steps: int = 60, estimator: str = "fair_grpo", output_dir: str | None = None, seed: int = 0
) -> dict[str, tuple[float, float, int]]:
    """Train the tiny VLM for `steps` steps; return the per-group summary of `summarise`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fair_trl.config import FairGRPOConfig
    from fair_trl.models import build_tiny_vlm
    from fair_trl.trainer import FairGRPOTrainer

    model, processor = build_tiny_vlm(seed=seed)
    dataset = make_demo_dataset(seed=seed)
    log = RewardLog(GroupKeyer(["sex", "age"]), [])
    with tempfile.TemporaryDirectory() as scratch:
        config = FairGRPOConfig(
            output_dir=output_dir or scratch,
            advantage_estimator=estimator,
            use_cpu=True,
            bf16=False,
            learning_rate=5e-3,
            per_device_train_batch_size=64,
            num_generations=4,
            max_completion_length=4,
            activation_checkpointing=False,
            max_steps=steps,
            logging_steps=max(steps // 6, 1),
            save_strategy="no",
            report_to="none",
            seed=seed,
            disable_tqdm=False,
        )
        trainer = FairGRPOTrainer(
            model=model,
            reward_funcs=log.accuracy_reward,
            args=config,
            train_dataset=dataset,
            processing_class=processor,
        )
        trainer.train()
    return summarise(log.records, steps)


def summarise(records: list[tuple[int, str, float]], steps: int) -> dict[str, tuple[float, float, int]]:
    """{group: (mean reward in the first third of steps, in the last third, completions scored)}."""
    third = max(steps // 3, 1)
    early: dict[str, list[float]] = defaultdict(list)
    late: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for step, group, reward in records:
        counts[group] += 1
        if step < third:
            early[group].append(reward)
        elif step >= steps - third:
            late[group].append(reward)

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {g: (mean(early[g]), mean(late[g]), counts[g]) for g in sorted(counts)}


def print_summary(summary: dict[str, tuple[float, float, int]], steps: int) -> None:
    third = max(steps // 3, 1)
    print(f"\nMean reward per demographic group, first {third} vs last {third} of {steps} steps")
    print(f"{'group':<20}{'early':>8}{'late':>8}{'n':>8}")
    for group, (early, late, n) in summary.items():
        print(f"{group:<20}{early:>8.3f}{late:>8.3f}{n:>8}")


def main(steps: int = 60, estimator: str = "fair_grpo", output_dir: str | Path | None = None, seed: int = 0) -> None:
    summary = run_demo(steps, estimator, str(output_dir) if output_dir else None, seed)
    print_summary(summary, steps)
