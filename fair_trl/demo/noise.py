"""The noise check (`fair-trl demo --noise_check`): GRPO against itself, to see what pairing by seed buys.

The noise methods (`fair_trl.demo.experiment.NOISE_METHODS`) are GRPO again on each seed's warm start
with only chance moved: the seed of the completions' sampling, or that and the prompt order. For each
such arm and metric at the final checkpoint:

* paired sd: sd over seeds of (arm - GRPO) at the same seed, the spread left in every paired difference
  the report shows;
* unpaired sd: sd of (arm at seed i+1 mod n - GRPO at seed i), the same comparison across warm starts,
  what the differences would spread by without pairing;
* ratio paired / unpaired: below 1 when pairing removes noise;
* the paired mean difference with its 95% t interval: an A/A check, which should contain 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fair_trl.demo.stats import paired_difference

__all__ = ["NOISE_METRICS", "noise_check", "noise_section"]

NOISE_METRICS = {"delta_f1": "ΔF1", "pp": "PP", "f1": "F1"}


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def noise_check(finals: dict[str, dict[int, dict[str, float]]], arms: dict[str, str]) -> dict[str, Any]:
    """{arm: {"label", "seeds", metric: {paired_sd, unpaired_sd, ratio, paired: {mean, ci}, contains_zero}}}.

    `finals`: {method: {seed: final-checkpoint metrics}}, GRPO's included; `arms`: {noise method: label}.
    """
    reference = finals["grpo"]
    out: dict[str, Any] = {}
    for arm, label in arms.items():
        seeds = sorted(set(finals[arm]) & set(reference))
        entry: dict[str, Any] = {"label": label, "seeds": len(seeds)}
        for name in NOISE_METRICS:
            ours = np.array([finals[arm][s][name] for s in seeds])
            grpo = np.array([reference[s][name] for s in seeds])
            paired = paired_difference(ours, grpo)
            paired_sd = _sd(ours - grpo)
            unpaired_sd = _sd(np.roll(ours, -1) - grpo)  # the arm's next seed: another warm start
            low, high = paired["ci"]
            entry[name] = {
                "paired_sd": paired_sd,
                "unpaired_sd": unpaired_sd,
                "ratio": paired_sd / unpaired_sd if unpaired_sd > 0 else float("nan"),
                "paired": {"mean": paired["mean"], "ci": paired["ci"]},
                "contains_zero": bool(low <= 0 <= high),
            }
        out[arm] = entry
    return out


def noise_section(check: dict[str, Any]) -> list[str]:
    """The report's "Noise check" section (without its heading)."""
    lines = [
        "GRPO run again on each seed's warm start with only chance moved, at the final checkpoint. Paired sd: the "
        "spread over seeds of (arm - GRPO) at the same seed, the noise left in every paired difference of this "
        "report; unpaired sd: the spread of (arm at the next seed - GRPO at this seed), the same comparison across "
        "warm starts. Pairing helps where the paired sd is below the unpaired one (ratio below 1).",
        "",
        "The mean difference is an A/A check: the arm is GRPO, so its 95% t interval should contain 0 (it misses "
        "by chance about 1 time in 20); an interval that excludes 0 means the runs differ in something besides "
        "chance, or the intervals are too narrow.",
        "",
    ]
    rows = []
    for entry in check.values():
        for name, title in NOISE_METRICS.items():
            m = entry[name]
            diff = m["paired"]
            rows.append([
                entry["label"], title, str(entry["seeds"]), f"{m['paired_sd']:.4f}", f"{m['unpaired_sd']:.4f}",
                f"{m['ratio']:.2f}", f"{diff['mean']:+.4f} [{diff['ci'][0]:+.4f}, {diff['ci'][1]:+.4f}]",
                "yes" if m["contains_zero"] else "no",
            ])  # fmt: skip
    header = ["arm", "metric", "seeds", "paired sd", "unpaired sd", "ratio", "mean diff [95% CI]", "contains 0"]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    return lines
