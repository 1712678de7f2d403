"""Is the demo an instrument that can see a gap closing? The validity gate and the log of trials.

The gate has two parts, both at the final checkpoint and paired by seed:

* the positive control (GRPO with oracle oversampling of the planted cells,
  `fair_trl.demo.benchmark.ORACLE_RULE`) must cut Delta F1 versus GRPO, with a 95% t interval that
  excludes 0. If even an oracle cannot close the gap at this budget, a null result for FairGRPO says
  nothing about FairGRPO;
* GRPO must not lose F1 against the warm start it started from: its mean F1 change over seeds must be
  at least 0. RL that makes the model worse overall is not the paper's setting (there RL raises every
  method's F1 and the question is who gains), and a gap that closes while everything degrades is no
  evidence either. A mean, not an interval: a noisy gain passes, an average loss does not.

The benchmark and budget are chosen by looking only at GRPO and the control. `fair-trl demo --trial`
runs exactly those two methods and appends one line per call to the trial log
(``reports/demo/instrument_trials.jsonl``); the report lists every line. Nothing else writes the log,
so the list of settings tried, with the control's result for each, is complete by construction.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fair_trl.demo.benchmark import ORACLE_RULE_NAME
from fair_trl.demo.experiment import ExperimentSettings
from fair_trl.demo.stats import excludes_zero, paired_difference

__all__ = [
    "CONTROL", "QUICK_SEEDS", "TRIAL_FIELDS", "TRIAL_LOG", "TRIAL_METHODS", "append_trial", "first_seeds_gate", "gate",
    "gate_power", "power_text", "read_trials", "trial_record",
]  # fmt: skip

CONTROL = "oracle_oversampling"
# The quick demo's seeds (`make demo`): the gate must hold there too, not only in a study with more.
QUICK_SEEDS = ExperimentSettings.__dataclass_fields__["seeds"].default
TRIAL_METHODS = ("grpo", CONTROL)
TRIAL_LOG = Path("reports/demo/instrument_trials.jsonl")
# Settings a trial is described by (the rest, like workers or n_bootstrap, do not change its runs).
TRIAL_FIELDS = (
    "seeds", "steps", "eval_every", "prompts_per_step", "num_generations", "learning_rate", "temperature",
    "max_completion_length", "sft_steps", "sft_learning_rate", "sft_batch_size", "pretrain_rows",
    "pretrain_disadvantaged_keep", "rl_rows", "eval_rows", "benchmark", "data_seed",
)  # fmt: skip


def _interval(diff: dict[str, Any]) -> str:
    return f"{diff['mean']:+.3f} [95% t interval {diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]"


def _parts_pass(delta_f1: dict[str, Any], grpo_f1_change: float) -> tuple[bool, bool]:
    """The gate's two parts: the control's ΔF1 difference to GRPO is a cut with an interval excluding 0; and
    GRPO's mean F1 change from its warm start is not a loss."""
    return bool(delta_f1["mean"] < 0 and excludes_zero(delta_f1["ci"])), bool(grpo_f1_change >= 0)


def gate(results: dict[str, Any]) -> dict[str, Any]:
    """{"valid": True/False (None without a control), "text": the report's first line, and both parts' numbers}.

    ``delta_f1``: the control's paired ΔF1 difference to GRPO; ``grpo_f1_change``: GRPO's paired F1
    change from the warm start.
    """
    methods = results["methods"]
    control = methods.get(CONTROL)
    step = results["settings"]["steps"]
    learns = methods["grpo"]["vs_warm_start"]["f1"]
    if control is None:
        return {
            "valid": None,
            "delta_f1": None,
            "grpo_f1_change": learns,
            "text": "instrument not checked: no positive control was run, so a null result cannot be told apart "
            "from an insensitive benchmark.",
        }
    diff = control["vs_grpo"]["delta_f1"]
    cuts, gains = _parts_pass(diff, learns["mean"])
    control_text = (
        f"the positive control (oracle oversampling) changes ΔF1 by {_interval(diff)} vs GRPO at the final "
        f"checkpoint (step {step})"
    )
    learn_text = f"GRPO's F1 changes by {_interval(learns)} from the warm start"
    if cuts and gains:
        text = (
            f"instrument valid: {control_text}, an interval excluding 0, and {learn_text}, not a loss on average; "
            "so this benchmark and budget can show a gap closing, in the paper's setting."
        )
    else:
        failed = []
        if not cuts:
            failed.append(f"{control_text}, an interval that does not exclude 0 on the side of a cut")
        if not gains:
            failed.append(f"{learn_text}, a loss on average: RL makes the model worse, not the paper's setting")
        text = (
            f"instrument invalid: {'; and '.join(failed)}. At this budget the benchmark cannot show a gap closing, "
            "and no method's ΔF1 row below is evidence either way."
        )
    return {"valid": cuts and gains, "delta_f1": diff, "grpo_f1_change": learns, "text": text}


def first_seeds_gate(results: dict[str, Any], seeds: int = QUICK_SEEDS) -> dict[str, Any] | None:
    """The gate on a run's first `seeds` seeds, as the quick demo would see it; None if it has fewer or no control.

    Both parts as in `gate`: the control's paired ΔF1 difference to GRPO must have a 95% t interval below 0,
    and GRPO's mean F1 change from its warm start must be at least 0.
    """
    control = results["methods"].get(CONTROL)
    if control is None or len(control["seeds"]) < seeds:
        return None
    diff = paired_difference(control["vs_grpo"]["delta_f1"]["values"][:seeds], [0.0] * seeds)
    learns = float(np.mean(results["methods"]["grpo"]["vs_warm_start"]["f1"]["values"][:seeds]))
    return {"valid": all(_parts_pass(diff, learns)), "delta_f1": diff, "grpo_f1_change": learns}


def gate_power(results: dict[str, Any], seeds: int = QUICK_SEEDS, target: float = 0.8) -> dict[str, Any] | None:
    """How often a fresh run of `seeds` seeds would see the control's cut; None without a control or 3 seeds.

    Takes the mean and sd of this run's paired control - GRPO ΔF1 differences as the truth: a `seeds`-seed
    t interval then lies wholly below 0 with the probability a noncentral t gives. ``seeds_for_target``: the
    fewest seeds for which that probability reaches `target` (None if more than 200). Near the noise, one
    machine's quick gate can be valid and another's not; this says how often to expect which.
    """
    from scipy import stats

    control = results["methods"].get(CONTROL)
    if control is None:
        return None
    d = np.asarray(control.get("vs_grpo", {}).get("delta_f1", {}).get("values", []), dtype=float)
    if len(d) < 3 or d.std(ddof=1) == 0:
        return None
    mean, sd = float(d.mean()), float(d.std(ddof=1))

    def chance(n: int) -> float:
        return float(stats.nct.cdf(-stats.t.ppf(0.975, n - 1), n - 1, mean * np.sqrt(n) / sd))

    needed = next((n for n in range(2, 201) if chance(n) >= target), None)
    return {"chance": chance(seeds), "seeds": seeds, "seeds_for_target": needed, "target": target,
            "mean": mean, "sd": sd, "from_seeds": len(d)}  # fmt: skip


def power_text(power: dict[str, Any]) -> str:
    needed, target = power["seeds_for_target"], power["target"]
    more = f"{needed} seeds would see it {target:.0%} of the time" if needed else "no count up to 200 would"
    return (
        f"Taking the control's paired ΔF1 differences to GRPO here (mean {power['mean']:+.3f}, sd {power['sd']:.3f} "
        f"over {power['from_seeds']} seeds) as the truth, a {power['seeds']}-seed run sees the control's cut (an "
        f"interval below 0) with probability {power['chance']:.0%}; {more}."
    )


def trial_record(
    results: dict[str, Any], seconds: float, cpu_seconds: float, benchmark: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One line of the trial log: the settings and what GRPO and the control did with them.

    `benchmark`: the resolved `SyntheticConfig` (so a trial stays readable if the defaults change later).
    """
    settings = results["settings"]
    methods = results["methods"]
    verdict = gate(results)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {name: settings[name] for name in TRIAL_FIELDS},
        "benchmark_config": benchmark,
        "grpo": {k: methods["grpo"][k]["mean"] for k in ("f1", "delta_f1", "exact")},
        "control": {k: methods[CONTROL][k]["mean"] for k in ("f1", "delta_f1", "exact")},
        "control_vs_grpo_delta_f1": {"mean": verdict["delta_f1"]["mean"], "ci": verdict["delta_f1"]["ci"]},
        "grpo_f1_vs_warm_start": {k: verdict["grpo_f1_change"][k] for k in ("mean", "ci")},
        "control_rule": ORACLE_RULE_NAME,
        "valid": verdict["valid"],
        "wall_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
    }


def append_trial(record: dict[str, Any], path: str | Path = TRIAL_LOG) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_trials(path: str | Path = TRIAL_LOG) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
