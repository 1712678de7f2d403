"""Is the demo an instrument that can see a gap closing? The validity gate and the log of trials.

The gate: the positive control (GRPO with oracle oversampling of the planted-disadvantaged rows) must
cut Delta F1 versus GRPO at the final checkpoint, with a paired 95% interval that excludes 0. If even
an oracle cannot close the gap at this budget, a null result for FairGRPO says nothing about FairGRPO.

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

from fair_trl.demo.stats import excludes_zero

__all__ = ["CONTROL", "TRIAL_LOG", "TRIAL_METHODS", "append_trial", "gate", "read_trials", "trial_record"]

CONTROL = "oracle_oversampling"
TRIAL_METHODS = ("grpo", CONTROL)
TRIAL_LOG = Path("reports/demo/instrument_trials.jsonl")
# Settings a trial is described by (the rest, like workers or n_bootstrap, do not change its runs).
TRIAL_FIELDS = (
    "seeds", "steps", "eval_every", "prompts_per_step", "num_generations", "learning_rate", "temperature",
    "max_completion_length", "sft_steps", "sft_learning_rate", "sft_batch_size", "pretrain_rows",
    "pretrain_disadvantaged_keep", "rl_rows", "eval_rows", "benchmark", "data_seed",
)  # fmt: skip


def gate(results: dict[str, Any]) -> dict[str, Any]:
    """{"valid": True/False (None without a control), "text": the report's first line, "delta_f1": ...}."""
    control = results["methods"].get(CONTROL)
    step = results["settings"]["steps"]
    if control is None:
        return {
            "valid": None,
            "delta_f1": None,
            "text": "instrument not checked: no positive control was run, so a null result cannot be told apart "
            "from an insensitive benchmark.",
        }
    diff = control["vs_grpo"]["delta_f1"]
    valid = bool(diff["mean"] < 0 and excludes_zero(diff["ci"]))
    cut = f"{diff['mean']:+.3f} [95% t interval {diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]"
    if valid:
        text = (
            f"instrument valid: the positive control (oracle oversampling) changes ΔF1 by {cut} vs GRPO at the "
            f"final checkpoint (step {step}), an interval excluding 0, so this benchmark and budget can show a "
            "gap closing."
        )
    else:
        text = (
            f"instrument invalid: the positive control (oracle oversampling) changes ΔF1 by {cut} vs GRPO at the "
            f"final checkpoint (step {step}); the interval does not exclude 0 on the side of a cut, so at this "
            "budget the benchmark cannot show a gap closing, and no method's ΔF1 row below is evidence either way."
        )
    return {"valid": valid, "delta_f1": diff, "text": text}


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
