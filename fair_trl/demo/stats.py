"""Seed-level statistics of the demo: metrics per checkpoint, summaries over seeds, paired differences.

Runs of different methods with the same seed share the warm start, the data and the sampler's seed,
so each method is compared with GRPO seed by seed (paired differences). Intervals:

* a method's mean over seeds: percentile bootstrap over seeds (``n_bootstrap`` resamples);
* a difference to GRPO: Student-t interval of the paired per-seed differences (with a handful of
  seeds the percentile bootstrap is too narrow, the t interval is not);
* a relative change of Delta F1: that difference interval divided by GRPO's mean Delta F1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fair_trl.demo.evaluation import ATTRIBUTES

__all__ = [
    "EXACT_ENDPOINTS",
    "HEADLINE_METRICS",
    "checkpoint_metrics",
    "excludes_zero",
    "final_metrics",
    "paired_difference",
    "seed_summary",
]

# results.json name -> compute_fairness key; each is averaged over the demographic attributes.
HEADLINE_METRICS = {"f1": "f1", "acc": "acc", "delta_f1": "delta_f1", "eod": "EOD", "pp": "PP"}


# The study's secondary endpoints besides EOD and F1, all exact-match accuracies: of the worst
# demographic group (age and sex groups alike), of the rows in planted cells, and of every other row.
EXACT_ENDPOINTS = ("worst_group_exact", "planted_exact", "other_exact")


def checkpoint_metrics(checkpoint: dict[str, Any]) -> dict[str, float]:
    """Headline metrics of one checkpoint (each the mean over age and sex) and the exact-match accuracies."""
    out = {
        name: float(np.mean([checkpoint[attribute][key] for attribute in ATTRIBUTES]))
        for name, key in HEADLINE_METRICS.items()
    }
    out["exact"] = float(checkpoint["exact"])
    out["worst_group_exact"] = float(min(v for a in ATTRIBUTES for v in checkpoint[a]["group_exact"].values()))
    planted = checkpoint["planted_exact"]
    out["planted_exact"] = float(planted.get("planted", math.nan))  # nan: a planting with no planted rows
    out["other_exact"] = float(planted.get("other", math.nan))
    return out


def final_metrics(run: dict[str, Any]) -> dict[str, float]:
    return checkpoint_metrics(run["checkpoints"][-1])


def seed_summary(values: Sequence[float], n_bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean, std (n-1) and a 95% percentile-bootstrap interval of the mean over seeds."""
    x = np.asarray(values, dtype=float)
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    if len(x) > 1 and n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        means = x[rng.integers(0, len(x), (n_bootstrap, len(x)))].mean(axis=1)
        ci = [float(q) for q in np.percentile(means, [2.5, 97.5])]
    else:
        ci = [float(x.mean()), float(x.mean())]
    return {"mean": float(x.mean()), "std": std, "ci": ci, "values": [float(v) for v in x]}


def paired_difference(method: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Mean of per-seed differences method - reference, with a 95% Student-t interval."""
    from scipy import stats

    d = np.asarray(method, dtype=float) - np.asarray(reference, dtype=float)
    if len(d) < 2:
        return {"mean": float(d.mean()), "ci": [math.nan, math.nan], "values": d.tolist()}
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return {"mean": float(d.mean()), "ci": [float(d.mean() - half), float(d.mean() + half)], "values": d.tolist()}


def excludes_zero(interval: Sequence[float]) -> bool:
    low, high = interval
    return bool(low > 0 or high < 0)
