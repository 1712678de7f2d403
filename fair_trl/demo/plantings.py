"""The gate and the judged methods on every published planting: ``plantings.md``, quoted in the README.

The reference study (``reports/demo/results.json``) runs the demo's default planting; each
``reports/demo/planting-NAME/`` holds the same settings run with one more ``-b 'disadvantaged=[...]'``
(`fair-trl demo --publish --publish_dir reports/demo/planting-NAME`). Every publish rewrites the table,
so it always names every planting the gate was checked on, with the gate's result on each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fair_trl.demo.experiment import DEMO_BENCHMARK, METHODS
from fair_trl.demo.instrument import CONTROL, QUICK_SEEDS, first_seeds_gate, gate_power
from fair_trl.demo.reference import IGNORED_SETTINGS, REFERENCE_DIR, setting_differences
from fair_trl.demo.report import diff_text, markdown_table, relative_text

__all__ = [
    "JUDGED", "PLANTING_PREFIX", "PLANTINGS_FILE", "check_same_settings", "plantings_markdown", "plantings_root",
    "published_results", "write_plantings",
]  # fmt: skip

PLANTINGS_FILE = "plantings.md"
PLANTING_PREFIX = "planting-"
# The methods the table follows across plantings: FairGRPO and the variant beyond the paper.
JUDGED = ("fair_grpo", "guided_sampling", "fair_grpo_guided")
# What may differ between the reference study and a planting beside it: the planting, and what a quick
# run may differ in from the study (how many runs, nothing that changes one).
_PER_PLANTING = ("benchmark", *IGNORED_SETTINGS)


def plantings_root(published: str | Path) -> Path:
    """The reference folder a published report belongs to (a planting's is its parent)."""
    path = Path(published)
    return path.parent if path.name.startswith(PLANTING_PREFIX) else path


def _planting(settings: dict[str, Any]) -> str:
    extra = [item for item in settings["benchmark"] if item not in DEMO_BENCHMARK]
    if not extra:
        return f"default, `{DEMO_BENCHMARK[0]}`"
    return ", ".join(f"`{item}`" for item in extra).replace("|", "\\|")  # a bare `|` would end the table cell


def _method_cell(results: dict[str, Any], method: str) -> str:
    entry = results["methods"].get(method)
    if entry is None or "vs_grpo" not in entry:
        return "not run"
    vs = entry["vs_grpo"]
    words = results["verdict"]["words"].get(method, {})
    return (
        f"ΔF1 {relative_text(vs['delta_f1_relative'])} {words.get('delta_f1', '')}; "
        f"PP {relative_text(vs['pp_relative'], 'PP')} {words.get('pp', '')} ({vs['seeds']} seeds)"
    )


_VERDICT = {True: "valid", False: "invalid", None: "not checked"}


def _row(folder: str, results: dict[str, Any]) -> list[str]:
    gate = results["gate"]
    control = results["methods"].get(CONTROL, {}).get("vs_grpo")
    shift = "not run"
    if control:
        shift = f"{diff_text(control['delta_f1'])} ({relative_text(control['delta_f1_relative'])})"
    quick = first_seeds_gate(results)
    quick_text = f"{_VERDICT[quick['valid']]} ({diff_text(quick['delta_f1'])})" if quick else "fewer seeds"
    power = gate_power(results)
    power_cell = f"{power['chance']:.0%} ({power['seeds_for_target'] or '> 200'} for 80%)" if power else "-"
    return [
        f"{_planting(results['settings'])} ({folder})",
        str(len(results["methods"]["grpo"]["seeds"])),
        shift,
        _VERDICT[gate["valid"]],
        quick_text,
        power_cell,
        *(_method_cell(results, m) for m in JUDGED),
    ]


def published_results(root: str | Path) -> dict[Path, dict[str, Any]]:
    """{folder: its results} of the reference study at `root` and every planting published beside it."""
    root = Path(root)
    candidates = [root, *sorted(root.glob(f"{PLANTING_PREFIX}*"))]
    return {f: json.loads((f / "results.json").read_text()) for f in candidates if (f / "results.json").is_file()}


def plantings_markdown(root: str | Path = REFERENCE_DIR) -> str:
    """One row per published planting under `root`: the gate, and each JUDGED method's changes against GRPO."""
    root = Path(root)
    published = published_results(root)
    check_same_settings(published, root)
    # Named relative to the root, so the table reads the same wherever the reference folder lies.
    rows = [
        _row("the reference study" if folder == root else f"`{folder.name}/`", results)
        for folder, results in published.items()
    ]
    header = [
        "planting", "seeds", "control - GRPO, ΔF1 (change)", "gate",
        f"gate, first {QUICK_SEEDS} seeds (control - GRPO)", f"{QUICK_SEEDS}-seed run sees the cut (seeds for 80%)",
        *(METHODS[m].label for m in JUDGED),
    ]  # fmt: skip
    lines = [
        "The gate on every published planting, and what FairGRPO and guided sampling do there against GRPO "
        "(paired by seed, 95% t intervals; the words as in the verdict); each planting's report is in its "
        "folder beside the reference study's. Every planting ran at the reference study's settings. The gate "
        f"is given at all seeds and at the first {QUICK_SEEDS}, the quick demo's count, with how often a fresh "
        f"{QUICK_SEEDS}-seed run would see the control's cut if this run's mean and sd of the paired differences "
        "were the truth (a noncentral t), and how many seeds would see it 80% of the time. Where the gate is "
        "invalid, no method's result on that planting is evidence either way.",
        "",
        *markdown_table(header, rows),
    ]
    return "\n".join(lines) + "\n"


def check_same_settings(published: dict[Path, dict[str, Any]], root: Path) -> None:
    """Refuse plantings run at other settings than the reference study's (other than `_PER_PLANTING`).

    A planting beside the study is evidence about the study's instrument only if it ran that instrument;
    one left over from earlier settings must be rerun or removed, and the error names it and how it differs.
    """
    reference = published.get(root)
    if reference is None:
        return
    for folder, results in published.items():
        differ = [
            f"{name} {here!r} there, {there!r} in the study"
            for name, here, there in setting_differences(results["settings"], reference["settings"], _PER_PLANTING)
        ]
        if results.get("control_rule") != reference.get("control_rule"):
            rules = results.get("control_rule"), reference.get("control_rule")
            differ.append(f"the control's rule {rules[0]!r} there, {rules[1]!r} in the study")
        if differ:
            raise ValueError(
                f"{folder} ran at other settings than the reference study in {root}: {'; '.join(differ)}. "
                "Rerun that planting at the study's settings, or remove its folder."
            )


def write_plantings(root: str | Path = REFERENCE_DIR) -> Path:
    path = Path(root) / PLANTINGS_FILE
    path.write_text(plantings_markdown(root))
    return path
