"""Does this run reproduce the reference study? The check a quick `make demo` ends with.

The reference study is the published ``reports/demo/results.json`` (`fair-trl demo --publish`). When
this run's settings match it in everything that changes a run (seeds, methods, workers and bootstrap
resamples aside), then for every method both ran, and for ΔF1 and PP, this run's 95% t interval on the
paired difference to GRPO either contains the study's estimate (consistent: this machine reproduces the
study's effect within its noise) or not (this machine's numerics differ, or the study's estimate is
wrong). A 95% interval also misses by chance, about 1 time in 20.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fair_trl.demo.experiment import METHODS, ExperimentSettings
from fair_trl.demo.instrument import CONTROL, gate_power

__all__ = ["IGNORED_SETTINGS", "REFERENCE_DIR", "REFERENCE_RESULTS", "reference_check", "setting_differences"]

REFERENCE_DIR = Path("reports/demo")
REFERENCE_RESULTS = REFERENCE_DIR / "results.json"
# Settings a quick run may differ in from the study: how many runs, and nothing that changes one.
IGNORED_SETTINGS = ("seeds", "secondary_seeds", "methods", "workers", "n_bootstrap")
CHECKED = {"delta_f1": "ΔF1", "pp": "PP"}


def _no_check(path: Path, why: str) -> dict[str, Any]:
    return {"checked": False, "reference": str(path), "methods": {}, "text": f"No reference check: {why}."}


def setting_differences(
    ours: dict[str, Any], theirs: dict[str, Any], ignored: tuple[str, ...] = IGNORED_SETTINGS
) -> list[tuple[str, Any, Any]]:
    """(name, ours, theirs) of every setting that changes a run, `ignored` aside; a missing one is at its default."""
    defaults = ExperimentSettings().to_dict()
    out = []
    for name in sorted(set(ours) | set(theirs)):
        if name in ignored:
            continue
        here, there = ours.get(name, defaults.get(name)), theirs.get(name, defaults.get(name))
        if here != there:
            out.append((name, here, there))
    return out


def _label(method: str, results: dict[str, Any]) -> str:
    entry = results["methods"][method]
    return entry.get("label") or (METHODS[method].label if method in METHODS else method)


def reference_check(results: dict[str, Any], reference: str | Path | None) -> dict[str, Any]:
    """{"checked", "reference", "methods": {method: {metric: {reference, ci, consistent}}}, "text"}.

    `results`: this run's results.json; `reference`: the study's results.json (None or missing: no check).
    """
    if reference is None:
        return _no_check(Path(""), "no reference study was given")
    path = Path(reference)
    if not path.is_file():
        return _no_check(path, f"no reference study at {path} (`fair-trl demo --publish` writes it)")
    study = json.loads(path.read_text())
    if "settings" not in study or not isinstance(study.get("methods"), dict):
        return _no_check(path, f"{path} has no settings or per-method results")
    pairs = setting_differences(results["settings"], study["settings"])
    differ = [f"{name} ({here} here, {there} there)" for name, here, there in pairs]
    if differ:
        return _no_check(path, f"this run's settings differ from the reference study's ({path}) in {', '.join(differ)}")
    shared = [m for m, e in results["methods"].items() if "vs_grpo" in e and "vs_grpo" in study["methods"].get(m, {})]
    if not shared:
        return _no_check(path, f"no method besides GRPO is in both this run and the reference study ({path})")
    checked: dict[str, Any] = {}
    lines = [
        f"Against the reference study {path}: does this run's 95% interval on each paired difference to GRPO "
        "contain the study's estimate?"
    ]
    same_control = study.get("control_rule") == results.get("control_rule")
    for method in shared:
        if method == CONTROL and not same_control:
            # Another rule is another control: its effect says nothing about this one's.
            lines.append(f"- {_label(method, results)}: not checked: the study's control drew by another rule "
                         f"({study.get('control_rule')!r}).")  # fmt: skip
            checked[method] = {}
            continue
        ours, theirs = results["methods"][method]["vs_grpo"], study["methods"][method]["vs_grpo"]
        checked[method] = {}
        parts, misses = [], []
        for metric, title in CHECKED.items():
            estimate, (low, high) = theirs[metric]["mean"], ours[metric]["ci"]
            if not (math.isfinite(low) and math.isfinite(high)):
                consistent = None
                parts.append(f"{title} not checked (one seed here: no interval)")
            else:
                consistent = bool(low <= estimate <= high)
                where = "in" if consistent else "outside"
                parts.append(f"{title} study {estimate:+.3f} {where} this run's [{low:+.3f}, {high:+.3f}]")
                if not consistent:
                    misses.append(f"{title} difference ({estimate:+.3f} there, [{low:+.3f}, {high:+.3f}] here)")
            checked[method][metric] = {"reference": estimate, "ci": [low, high], "consistent": consistent}
        if misses:
            meaning = (
                "not consistent with the reference study: either this machine's numerics differ from the study's, "
                f"or the study is wrong about its {' and '.join(misses)} (or chance: a 95% interval misses 1 time "
                "in 20)"
            )
        elif all(c["consistent"] for c in checked[method].values()):
            meaning = "consistent with the reference study: this machine reproduces the study's effect within its noise"
        else:
            meaning = "not checked"
        lines.append(f"- {_label(method, results)}: {'; '.join(parts)}: {meaning}.")
    power = gate_power(study)
    if power is not None and same_control:
        lines.append(
            f"- The gate: the reference study's control gives a {power['seeds']}-seed run a {power['chance']:.0%} "
            "chance of seeing its cut (a noncentral t from the study's paired differences), so a quick run's gate "
            f"may be invalid on one machine and valid on another; {power['seeds_for_target'] or 'more than 200'} "
            "seeds would see it 80% of the time."
        )
    return {"checked": True, "reference": str(path), "methods": checked, "text": "\n".join(lines)}
