"""Fairness of the training rollouts: what the trainer logs every `fairness_logging_steps`.

The trainer's log (`fair_trl.rollout_log`) records one `Rollout` per completion (the extracted answer,
the reference, the dataset and each attribute's group); every N steps it scores the records since the
last log here, with `fair_trl.metrics.compute_fairness`, one attribute at a time, flattened into scalar keys:

* ``fairness/{attribute}/{metric}`` for f1, acc, eod, pp, fpr_diff, delta_f1, sigma_f1
* ``fairness/{dataset}/{attribute}/{group}/f1``
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from fair_trl.metrics import compute_fairness_by_attribute, dataset_classes
from fair_trl.rewards import matcher_for

__all__ = [
    "LOGGED_METRICS",
    "Rollout",
    "fairness_metrics",
    "fairness_results",
    "flatten_results",
]

# Logged name -> compute_fairness key.
LOGGED_METRICS = {
    "f1": "f1",
    "acc": "acc",
    "eod": "EOD",
    "pp": "PP",
    "fpr_diff": "FPR_diff",
    "delta_f1": "delta_f1",
    "sigma_f1": "sigma_f1",
}


class Rollout(NamedTuple):
    answer: str | None  # the completion's final \boxed{} / <answer> content, None if it has none
    reference: str
    dataset: str
    groups: Mapping[str, str | None]  # attribute column -> group ("a3", "F") or None when unknown


def fairness_results(rollouts: Sequence[Rollout], attributes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`compute_fairness` output per attribute that has at least one known group; {} without rollouts."""
    if not rollouts:
        return {}
    answers, references, datasets, group_maps = (list(column) for column in zip(*rollouts, strict=True))
    # A log holds thousands of rollouts but few distinct (dataset, answer) pairs: match each pair once.
    reference_pairs = dict.fromkeys(zip(datasets, references, strict=True))
    classes = dataset_classes([d for d, _ in reference_pairs], [ref for _, ref in reference_pairs])
    matchers = {name: matcher_for(labels) for name, labels in classes.items()}
    for d, ref in reference_pairs:
        reference_pairs[d, ref] = matchers[d].match(ref)
    answer_pairs = dict.fromkeys(zip(datasets, answers, strict=True))
    for d, answer in answer_pairs:
        answer_pairs[d, answer] = matchers[d].match(answer) if answer else frozenset()
    predictions = [answer_pairs[pair] for pair in zip(datasets, answers, strict=True)]
    matched = [reference_pairs[pair] for pair in zip(datasets, references, strict=True)]
    groups = {}
    for attribute in attributes:
        values = [groups_of.get(attribute) for groups_of in group_maps]
        if any(g is not None for g in values):
            groups[attribute] = values
    return compute_fairness_by_attribute(predictions, matched, datasets, groups, classes)


def flatten_results(results: Mapping[str, Mapping[str, Any]], prefix: str = "fairness") -> dict[str, float]:
    """Scalar logger keys from `fairness_results` output."""
    logs: dict[str, float] = {}
    for attribute, result in results.items():
        for name, key in LOGGED_METRICS.items():
            logs[f"{prefix}/{attribute}/{name}"] = float(result[key])
        for dataset, by_group in result["per_group"].items():
            for group, scores in by_group.items():
                logs[f"{prefix}/{dataset}/{attribute}/{group}/f1"] = float(scores["f1"])
    return logs


def fairness_metrics(
    rollouts: Sequence[Rollout], attributes: Iterable[str], prefix: str = "fairness"
) -> dict[str, float]:
    """Flat scalar metrics for a logger; empty when there is nothing to score."""
    return flatten_results(fairness_results(rollouts, attributes), prefix)
