"""The audit's and the comparison's figures, drawn from their report dicts (nothing is recomputed here).

matplotlib is imported inside each function, and figures are built with `matplotlib.figure.Figure`
rather than pyplot: no global state, no GUI backend, and the core library never needs matplotlib.
Each function returns the path it wrote, or None when the report holds nothing to draw.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "NO_MATPLOTLIB",
    "plot_f1_heatmap",
    "plot_group_differences",
    "plot_group_f1",
    "plot_worst_group_confusion",
    "plotting_available",
]

NO_MATPLOTLIB = "plots not drawn: matplotlib is not installed (pip install matplotlib)"


def plotting_available() -> bool:
    """Whether matplotlib can be imported; without it the reports are written with their tables only."""
    return importlib.util.find_spec("matplotlib") is not None


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _errors(values: list[float], intervals: list[Any]) -> list[list[float]]:
    # matplotlib wants distances below and above each bar; a missing interval draws none.
    low = [v - ci[0] if ci else 0.0 for v, ci in zip(values, intervals, strict=True)]
    high = [ci[1] - v if ci else 0.0 for v, ci in zip(values, intervals, strict=True)]
    return [[max(x, 0.0) for x in low], [max(x, 0.0) for x in high]]


def plot_group_f1(report: Mapping[str, Any], path: str | Path) -> Path | None:
    """Per-group F1 with 95% intervals: one panel per (attribute, dataset)."""
    panels = [(a, d, g) for a, r in report["attributes"].items() for d, g in r["per_group"].items() if g]
    if not panels:
        return None
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = _figure(3.2 * columns, 2.6 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, (attribute, dataset, groups) in zip(axes, panels, strict=False):
        names = list(groups)
        values = [groups[g]["f1"] for g in names]
        intervals = [report.get("group_f1_ci", {}).get(attribute, {}).get(dataset, {}).get(g) for g in names]
        ax.bar(range(len(names)), values, yerr=_errors(values, intervals), capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(names)), [f"{g}\n(n={groups[g]['n']})" for g in names], fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{dataset} · {attribute}", fontsize=9)
        ax.set_ylabel("F1", fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("F1 per group, 95% bootstrap intervals")
    return _save(fig, path)


def plot_f1_heatmap(report: Mapping[str, Any], path: str | Path) -> Path | None:
    """Dataset x group F1, one heatmap per attribute; blank where a dataset has no such group."""
    import numpy as np

    attributes = [(a, r) for a, r in report["attributes"].items() if any(r["per_group"].values())]
    if not attributes:
        return None
    fig = _figure(4.2 * len(attributes), 0.45 * max(len(r["per_group"]) for _, r in attributes) + 1.8)
    axes = fig.subplots(1, len(attributes), squeeze=False).ravel()
    for ax, (attribute, result) in zip(axes, attributes, strict=True):
        datasets = list(result["per_group"])
        groups = sorted({g for by_group in result["per_group"].values() for g in by_group}, key=str)
        grid = np.full((len(datasets), len(groups)), np.nan)
        for i, d in enumerate(datasets):
            for j, g in enumerate(groups):
                if g in result["per_group"][d]:
                    grid[i, j] = result["per_group"][d][g]["f1"]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i in range(len(datasets)):
            for j in range(len(groups)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if grid[i, j] < 0.5 else "black")  # fmt: skip
        ax.set_xticks(range(len(groups)), [str(g) for g in groups], fontsize=8)
        ax.set_yticks(range(len(datasets)), datasets, fontsize=8)
        ax.set_title(f"F1 by dataset and {attribute} group", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_worst_group_confusion(report: Mapping[str, Any], path: str | Path) -> Path | None:
    """For each attribute, the label confusion (reference rows, predicted columns) of its worst group."""
    worst = report.get("worst_group") or {}
    if not worst:
        return None
    fig = _figure(4.6 * len(worst), 4.2)
    axes = fig.subplots(1, len(worst), squeeze=False).ravel()
    for ax, (attribute, cell) in zip(axes, worst.items(), strict=True):
        confusion = cell["confusion"]
        counts = confusion["counts"]
        ax.imshow(counts, cmap="Blues", aspect="auto")
        for i, row in enumerate(counts):
            for j, value in enumerate(row):
                if value:
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(confusion["predicted"])), confusion["predicted"], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(confusion["labels"])), confusion["labels"], fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("reference", fontsize=8)
        ax.set_title(
            f"worst {attribute} group: {cell['group']} on {cell['dataset']}\nF1 {cell['f1']:.3f}, n={cell['n']}",
            fontsize=9,
        )
    return _save(fig, path)


def plot_group_differences(comparison: Mapping[str, Any], path: str | Path) -> Path | None:
    """Per-group F1 difference B - A with paired 95% intervals (the paper's Fig. 3), one panel per attribute."""
    attributes = [(a, c) for a, c in comparison["attributes"].items() if c["per_group"]]
    if not attributes:
        return None
    height = max(sum(len(g) for g in c["per_group"].values()) for _, c in attributes)
    fig = _figure(4.8 * len(attributes), 0.28 * height + 1.6)
    axes = fig.subplots(1, len(attributes), squeeze=False).ravel()
    for ax, (attribute, result) in zip(axes, attributes, strict=True):
        cells = [(d, g, v) for d, groups in result["per_group"].items() for g, v in groups.items()]
        values = [v["difference"] for _, _, v in cells]
        intervals = [v["ci"] for _, _, v in cells]
        excludes = [bool(ci) and (ci[0] > 0 or ci[1] < 0) for ci in intervals]
        colors = ["#c44e52" if e and x < 0 else "#55a868" if e else "#8c8c8c" for x, e in zip(values, excludes,
                  strict=True)]  # fmt: skip
        ax.barh(range(len(cells)), values, xerr=_errors(values, intervals), color=colors, capsize=2)
        ax.set_yticks(range(len(cells)), [f"{d} · {g}" for d, g, _ in cells], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("F1 difference (B - A)", fontsize=8)
        ax.set_title(f"{attribute} groups", fontsize=9)
    labels = comparison.get("labels", {})
    fig.suptitle(f"B = {labels.get('b', 'B')} minus A = {labels.get('a', 'A')}; colour: interval excludes 0",
                 fontsize=9)  # fmt: skip
    return _save(fig, path)
