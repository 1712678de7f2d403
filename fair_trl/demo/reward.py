"""The demo's RL reward: the product's strict `accuracy_reward`, also kept per step and demographic group.

`mentioned_labels` is the partial-credit reading the quickstart notebook uses for a model that starts
from random weights and has not learnt the ``\\boxed{}`` format; the demo starts RL from a warm start
that has, so it trains on exactly what a real run trains on.
"""

from __future__ import annotations

from collections import defaultdict

from fair_trl.groups import normalise_attribute
from fair_trl.rewards import AccuracyReward, matcher_for

__all__ = ["RecordingReward", "mentioned_labels"]


class RecordingReward:
    """`fair_trl.rewards.AccuracyReward` (1 when the final ``\\boxed{}`` names exactly the reference labels).

    Every reward is also summed per (step, "attribute=group") for the training-reward curves.
    """

    __name__ = "accuracy_reward"

    def __init__(self) -> None:
        self.reward = AccuracyReward()
        self.sums: dict[tuple[int, str], list[float]] = defaultdict(lambda: [0.0, 0])

    def __call__(self, completions, solution, dataset, sex, age, trainer_state, **kwargs) -> list[float]:
        rewards = self.reward(completions, solution=solution, dataset=dataset, **kwargs)
        for reward, s, a in zip(rewards, sex, age, strict=True):
            for attribute, value in (("age", a), ("sex", s)):
                group = normalise_attribute(attribute, value)
                if group is not None:
                    cell = self.sums[(trainer_state.global_step, f"{attribute}={group}")]
                    cell[0] += reward
                    cell[1] += 1
        return rewards

    def curves(self, bucket: int) -> dict[str, list[list[float]]]:
        """{group: [[bucket start step, mean reward], ...]} over buckets of `bucket` steps."""
        merged: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
        for (step, group), (total, count) in self.sums.items():
            cell = merged[group][step // bucket * bucket]
            cell[0] += total
            cell[1] += count
        return {
            group: [[start, total / count] for start, (total, count) in sorted(buckets.items())]
            for group, buckets in sorted(merged.items())
        }


def mentioned_labels(text: str, labels: tuple[str, ...], longest: int = 3) -> frozenset[str]:
    """Labels named anywhere in `text`, by any run of up to `longest` consecutive words."""
    matcher = matcher_for(labels)
    words = text.split()
    found = set()
    for n in range(1, longest + 1):
        for i in range(len(words) - n + 1):
            found |= matcher.match(" ".join(words[i : i + n]))
    return frozenset(found)
