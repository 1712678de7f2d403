"""FairGRPO weight of prompts whose demographics are partly unknown, against complete prompts of the same true group.

The synthetic benchmark (``missing_demographics=0.1``) hides age and sex together; a real release often
loses one of them. So, on top of the benchmark's own hidden patients, a share ``--partial`` of the
complete rows loses one attribute (sex for half of them, age for the other half), keeping its true
group. Each prompt's G rewards are Bernoulli draws with a success rate set by its true group (lower in
the benchmark's planted disadvantaged groups), the same draws under both rules:

* ``known-part`` (the rule before): a row's key is its known attributes, so a row lacking sex gets the
  key ``age=a2``, a small group of its own;
* ``unlabeled``: a row lacking any attribute has no key and joins the latent groups of its domain
  (`GroupKeyer.key` before `fit`; shown because latent groups are small too);
* ``fitted`` (the policy: `GroupKeyer` fitted on the train rows, as the trainer does): a row lacking an
  attribute its domain records takes the most common complete group of its domain that agrees with it.

The weight of a prompt is its FairGRPO factor |A / s| (what ``fair/weight`` averages). Printed per rule:
the mean weight of the partly-unknown prompts, the mean weight of complete prompts of their true groups
(each true group counted as often as it has partly-unknown prompts), and their ratio.

    python benchmarks/missing_demographics.py [--rows 4000] [--steps 300] [--partial 0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from fair_trl.advantages import FairGRPOAdvantage
from fair_trl.data import build_dataset
from fair_trl.data.synthetic import is_disadvantaged
from fair_trl.groups import GroupKeyer

COLUMNS = ("sex", "age")
NUM_GENERATIONS = 8
PROMPTS_PER_STEP = 64
SUCCESS = {False: 0.6, True: 0.3}  # success rate of a rollout outside / inside a planted disadvantaged group


def known_part_key(keyer: GroupKeyer, row: Mapping[str, Any]) -> str | None:
    """The rule before: the known attributes joined, whatever is missing."""
    parts = [f"{c}={v}" for c in keyer.columns if (v := keyer.attribute(c, row.get(c))) is not None]
    return "|".join(parts) or None


RULES: dict[str, Callable[[GroupKeyer, Mapping[str, Any]], str | None]] = {
    "known-part": known_part_key,
    "unlabeled": lambda keyer, row: keyer.key(row),
    "fitted": lambda keyer, row: keyer.key(row, row["dataset"]),
}


def benchmark_rows(rows: int, partial: float, seed: int) -> list[dict[str, Any]]:
    """The benchmark's train rows (metadata only) with a true group, a share of them losing one attribute."""
    data = build_dataset("synthetic", None, num_rows=rows, seed=seed, image_size=8, missing_demographics=0.1)
    rng = np.random.default_rng(seed)
    keyer = GroupKeyer(COLUMNS)
    out = []
    for row in data["train"].select_columns(["dataset", *COLUMNS]).to_list():
        true_key = keyer.key(row)
        complete = all(keyer.attribute(c, row[c]) is not None for c in COLUMNS)
        row = {**row, "true_key": true_key, "partial": False, "complete": complete}
        row["disadvantaged"] = complete and is_disadvantaged(row["dataset"], row["age"], row["sex"])
        if complete and rng.random() < partial:
            row[COLUMNS[int(rng.integers(2))]] = None
            row["partial"], row["complete"] = True, False
        out.append(row)
    return out


def measure(rows: list[dict[str, Any]], rule: str, steps: int, seed: int, warmup: int = 20) -> dict[str, float]:
    """Mean weight of partly-unknown prompts and of complete prompts of the same true groups, under `rule`."""
    rng = np.random.default_rng(seed)
    keyer = GroupKeyer(COLUMNS)
    if rule == "fitted":
        keyer.fit(rows, [row["dataset"] for row in rows])
    estimator = FairGRPOAdvantage()
    complete_weights: dict[tuple[str, str], list[float]] = defaultdict(list)
    partial_weights: list[tuple[tuple[str, str], float]] = []
    for step in range(steps):
        batch = [rows[i] for i in rng.choice(len(rows), PROMPTS_PER_STEP, replace=False)]
        success = np.array([SUCCESS[row["disadvantaged"]] for row in batch])
        rewards = (rng.random((len(batch), NUM_GENERATIONS)) < success[:, None]).astype(np.float32)
        domains = [row["dataset"] for row in batch for _ in range(NUM_GENERATIONS)]
        groups = [RULES[rule](keyer, row) for row in batch for _ in range(NUM_GENERATIONS)]
        advantages = estimator(torch.from_numpy(rewards.reshape(-1)), NUM_GENERATIONS, domains, groups).numpy()
        if step < warmup:
            continue
        weights = prompt_weights(rewards, advantages.reshape(rewards.shape), estimator.norm_epsilon)
        for row, weight in zip(batch, weights, strict=True):
            if np.isnan(weight):
                continue
            true_group = (row["dataset"], row["true_key"])
            if row["partial"]:
                partial_weights.append((true_group, weight))
            elif row["complete"]:
                complete_weights[true_group].append(weight)
    paired = [(w, np.mean(complete_weights[g])) for g, w in partial_weights if complete_weights[g]]
    partial_mean = float(np.mean([w for w, _ in paired]))
    complete_mean = float(np.mean([c for _, c in paired]))
    return {
        "partial_mean_weight": round(partial_mean, 4),
        "complete_same_group_mean_weight": round(complete_mean, 4),
        "ratio": round(partial_mean / complete_mean, 3),
        "partial_prompts": len(paired),
    }


def prompt_weights(rewards: np.ndarray, advantages: np.ndarray, norm_epsilon: float) -> np.ndarray:
    """|A / s| per prompt (NaN for a prompt whose rewards are all equal: its s is 0)."""
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    s = centred / (rewards.std(axis=1, ddof=1, keepdims=True) + norm_epsilon)
    scale = np.abs(s).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, np.abs(advantages).max(axis=1) / scale, np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--partial", type=float, default=0.1, help="share of complete rows that lose one attribute")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = benchmark_rows(args.rows, args.partial, args.seed)
    results = {rule: measure(rows, rule, args.steps, args.seed) for rule in RULES}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
