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
from fair_trl.demo.instrument import CONTROL
from fair_trl.demo.reference import REFERENCE_DIR
from fair_trl.demo.report import _diff, _relative, _table

__all__ = ["JUDGED", "PLANTING_PREFIX", "PLANTINGS_FILE", "plantings_markdown", "plantings_root", "write_plantings"]

PLANTINGS_FILE = "plantings.md"
PLANTING_PREFIX = "planting-"
# The methods the table follows across plantings: FairGRPO and the variant beyond the paper.
JUDGED = ("fair_grpo", "guided_sampling", "fair_grpo_guided")


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
        f"ΔF1 {_relative(vs['delta_f1_relative'])} {words.get('delta_f1', '')}; "
        f"PP {_relative(vs['pp_relative'], 'PP')} {words.get('pp', '')} ({vs['seeds']} seeds)"
    )


def _row(folder: str, results: dict[str, Any]) -> list[str]:
    gate = results["gate"]
    control = results["methods"].get(CONTROL, {}).get("vs_grpo")
    shift = f"{_diff(control['delta_f1'])} ({_relative(control['delta_f1_relative'])})" if control else "not run"
    verdict = {True: "valid", False: "invalid", None: "not checked"}[gate["valid"]]
    return [
        f"{_planting(results['settings'])} ({folder})",
        str(len(results["methods"]["grpo"]["seeds"])),
        shift,
        verdict,
        *(_method_cell(results, m) for m in JUDGED),
    ]


def plantings_markdown(root: str | Path = REFERENCE_DIR) -> str:
    """One row per published planting under `root`: the gate, and each JUDGED method's changes against GRPO."""
    root = Path(root)
    candidates = [root, *sorted(root.glob(f"{PLANTING_PREFIX}*"))]
    published = [folder for folder in candidates if (folder / "results.json").is_file()]
    # Named relative to the root, so the table reads the same wherever the reference folder lies.
    rows = [
        _row(
            "the reference study" if folder == root else f"`{folder.name}/`",
            json.loads((folder / "results.json").read_text()),
        )
        for folder in published
    ]
    header = ["planting", "seeds", "control - GRPO, ΔF1 (change)", "gate", *(METHODS[m].label for m in JUDGED)]
    lines = [
        "The gate on every published planting, and what FairGRPO and guided sampling do there against GRPO "
        "(paired by seed, 95% t intervals; the words as in the verdict); each planting's report is in its "
        "folder beside the reference study's. Where the gate is invalid, no "
        "method's result on that planting is evidence either way.",
        "",
        *_table(header, rows),
    ]
    return "\n".join(lines) + "\n"


def write_plantings(root: str | Path = REFERENCE_DIR) -> Path:
    path = Path(root) / PLANTINGS_FILE
    path.write_text(plantings_markdown(root))
    return path
