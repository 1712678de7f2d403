"""The embedded default job: a short FairGRPO run of the tiny VLM on the synthetic benchmark.

Offline and CPU-only. The rows come from `build_dataset("synthetic", None)`: seven clinical domains
with a CheXpert-heavy mix, 32x32 images whose lit cells name the label, sex/age columns with gaps
and planted disparities, so every part of the FairGRPO path runs (explicit groups, latent groups for
rows with no demographics, domain temperatures). The run prints the mean reward per demographic
group early and late in training.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset

from fair_trl.groups import GroupKeyer
from fair_trl.labels import canonical_labels
from fair_trl.metrics import to_label_set
from fair_trl.rewards import completion_text, matcher_for


def demo_dataset(num_rows: int = 512, seed: int = 0, split: str = "train") -> Dataset:
    """Rows of the synthetic benchmark (prompt, image, solution, dataset, patient_id, age, sex)."""
    from fair_trl.data import build_dataset

    return build_dataset("synthetic", None, num_rows=num_rows, seed=seed)[split]


def mentioned_labels(text: str, labels: tuple[str, ...], longest: int = 3) -> frozenset[str]:
    """Labels named anywhere in `text`, by any run of up to `longest` consecutive words."""
    matcher = matcher_for(labels)
    words = text.split()
    found = set()
    for n in range(1, longest + 1):
        for i in range(len(words) - n + 1):
            found |= matcher.match(" ".join(words[i : i + n]))
    return frozenset(found)


@dataclass
class RewardLog:
    """Rewards per (step, group), filled by the reward function the trainer calls."""

    keyer: GroupKeyer
    records: list[tuple[int, str, float]]

    def accuracy_reward(self, completions, solution, dataset, sex, age, trainer_state, **_) -> list[float]:
        """Overlap (Jaccard) of the labels a completion mentions with the reference labels.

        A tiny random model has not learnt the \\boxed{} format, so any mention counts and partial
        credit gives it a gradient; the library's `accuracy_reward` is the strict version.
        """
        rewards = []
        for completion, answer, name, s, a in zip(completions, solution, dataset, sex, age, strict=True):
            mentioned = mentioned_labels(completion_text(completion), canonical_labels(name) or ())
            truth = to_label_set(answer)
            reward = len(mentioned & truth) / len(mentioned | truth) if mentioned | truth else 0.0
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
    dataset = demo_dataset(seed=seed)
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
