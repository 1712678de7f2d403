"""The demo's PNG plots (matplotlib, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fair_trl.demo.evaluation import ATTRIBUTES
from fair_trl.demo.experiment import METHODS
from fair_trl.demo.stats import checkpoint_metrics

__all__ = ["PLOTS", "pareto_front", "write_plots"]

PLOTS = (
    "curves.png",
    "pareto.png",
    "group_f1_curves.png",
    "group_weights.png",
    "group_f1_difference.png",
    "train_reward.png",
)
ROLE_STYLE = {"main": "-", "control": ":", "variant": "--", "baseline": "-.", "noise": "x:"}
# The methods whose per-group dynamics the paper's RQ2 compares, with the control for scale.
DYNAMICS_METHODS = ("grpo", "fair_grpo", "fair_grpo_nd", "oracle_oversampling")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in CI and in worker processes
    import matplotlib.pyplot as plt

    return plt


def _by_method(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        grouped[run["method"]].append(run)
    return grouped


def _curves_by_method(runs: list[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """{method: {"step": steps, metric: array seeds x checkpoints}} of the headline metrics."""
    out = {}
    for method, method_runs in _by_method(runs).items():
        steps = np.array([c["step"] for c in method_runs[0]["checkpoints"]])
        per_seed = [[checkpoint_metrics(c) for c in r["checkpoints"]] for r in method_runs]
        out[method] = {"step": steps} | {
            name: np.array([[m[name] for m in seed] for seed in per_seed]) for name in per_seed[0][0]
        }
    return out


def _save(fig, plt, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    panels = (("f1", "F1"), ("acc", "Accuracy (one-vs-rest)"), ("exact", "Exact-match accuracy"),
              ("delta_f1", "ΔF1 (lower is fairer)"))  # fmt: skip
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for method, c in curves.items():
            mean, std = c[metric].mean(axis=0), c[metric].std(axis=0)
            (line,) = ax.plot(c["step"], mean, ROLE_STYLE.get(METHODS[method].role, "-"), label=METHODS[method].label)
            ax.fill_between(c["step"], mean - std, mean + std, color=line.get_color(), alpha=0.12)
        ax.set_title(title)
        ax.set_xlabel("RL step (0 = warm start)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Held-out metrics against RL step (mean ± std over seeds)")
    _save(fig, plt, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both lower ΔF1 (x) and higher F1 (y)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((ox <= x and oy >= y) and (ox < x or oy > y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(curves: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    points = []
    for method, c in curves.items():
        xs, ys = c["delta_f1"].mean(axis=0), c["f1"].mean(axis=0)
        ax.scatter(xs[1:], ys[1:], s=18 + 40 * c["step"][1:] / c["step"][-1], label=METHODS[method].label, alpha=0.8)
        points += list(zip(xs[1:], ys[1:], strict=True))
    start = next(iter(curves.values()))
    ax.scatter(start["delta_f1"].mean(axis=0)[:1], start["f1"].mean(axis=0)[:1], marker="x", c="k", label="warm start")
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k-", lw=1, label="Pareto frontier")
    ax.set_xlabel("ΔF1 (mean of age and sex; lower is fairer)")
    ax.set_ylabel("F1")
    ax.set_title("Performance-fairness trade-off over checkpoints (later = larger marker)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, plt, path)


def plot_group_f1_curves(runs: list[dict[str, Any]], path: Path) -> None:
    """RQ2's dynamics: each group's held-out F1 against step, one panel per (attribute, method)."""
    plt = _pyplot()
    grouped = _by_method(runs)
    methods = [m for m in DYNAMICS_METHODS if m in grouped] or list(grouped)
    fig, axes = plt.subplots(len(ATTRIBUTES), len(methods), figsize=(4.2 * len(methods), 3.4 * len(ATTRIBUTES)),
                             squeeze=False, sharey=True)  # fmt: skip
    for row, attribute in enumerate(ATTRIBUTES):
        for col, method in enumerate(methods):
            ax = axes[row, col]
            method_runs = grouped[method]
            steps = [c["step"] for c in method_runs[0]["checkpoints"]]
            groups = sorted({g for r in method_runs for c in r["checkpoints"] for g in c[attribute]["group_f1"]})
            for group in groups:
                values = np.array(
                    [[c[attribute]["group_f1"].get(group, np.nan) for c in r["checkpoints"]] for r in method_runs]
                )
                ax.plot(steps, np.nanmean(values, axis=0), marker="o", ms=3, label=f"{attribute}={group}")
            ax.set_title(f"{METHODS[method].label}: {attribute}", fontsize=9)
            ax.set_xlabel("RL step")
            ax.grid(alpha=0.3)
        axes[row, 0].set_ylabel("held-out F1 (mean over seeds)")
        axes[row, 0].legend(fontsize=7)
    fig.suptitle("Per-group held-out F1 against RL step")
    _save(fig, plt, path)


def _mean_curves(series: list[dict[str, list[list[float]]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Average {group: [[step, value], ...]} over runs, step by step."""
    merged: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in series:
        for group, points in s.items():
            for step, value in points:
                merged[group][step].append(value)
    return {g: (np.array(sorted(v)), np.array([np.mean(v[k]) for k in sorted(v)])) for g, v in sorted(merged.items())}


def plot_group_weights(runs: list[dict[str, Any]], path: Path, bucket: int = 10) -> None:
    """The weight FairGRPO applied to each group's prompts, averaged over buckets of steps and seeds."""
    plt = _pyplot()
    grouped = _by_method(runs)
    methods = [m for m in grouped if any(r["group_weights"] for r in grouped[m])] or ["(no FairGRPO run)"]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 3.8), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods, strict=True):
        series = []
        for run in grouped.get(method, []):
            buckets: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
            for entry in run["group_weights"]:
                for group, weight in entry["group_weight"].items():
                    buckets[group][(entry["step"] - 1) // bucket * bucket].append(weight)
            series.append({g: [[s, float(np.mean(v))] for s, v in sorted(b.items())] for g, b in buckets.items()})
        for group, (steps, values) in _mean_curves(series).items():
            planted = "a1" in group or "a4" in group
            ax.plot(steps, values, "-" if planted else "--", lw=1.5 if planted else 0.9, label=group)
        ax.set_yscale("log")
        ax.set_title(METHODS[method].label if method in METHODS else method, fontsize=9)
        ax.set_xlabel(f"RL step (mean over {bucket}-step buckets and seeds)")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("advantage weight A / s")
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=5, ncol=2)
    fig.suptitle("FairGRPO's weight per demographic group (solid: groups containing a1 or a4)")
    _save(fig, plt, path)


def plot_group_difference(results: dict[str, Any], path: Path, method: str) -> None:
    plt = _pyplot()
    cells = results["per_group_difference"].get(method, {})
    names = [n for n, d in cells.items() if np.isfinite(d["mean"])]
    fig, ax = plt.subplots(figsize=(8, 0.22 * max(len(names), 4) + 1.5))
    means = np.array([cells[n]["mean"] for n in names])
    lows = np.array([cells[n]["ci"][0] for n in names])
    highs = np.array([cells[n]["ci"][1] for n in names])
    y = np.arange(len(names))
    ax.barh(y, means, color=["tab:green" if m >= 0 else "tab:red" for m in means], alpha=0.7)
    finite = np.isfinite(lows) & np.isfinite(highs)
    ax.errorbar(means[finite], y[finite], xerr=[means[finite] - lows[finite], highs[finite] - means[finite]],
                fmt="none", ecolor="k", lw=0.8)  # fmt: skip
    ax.set_yticks(y, names, fontsize=6)
    ax.axvline(0, color="k", lw=0.8)
    label = METHODS[method].label if method in METHODS else method
    ax.set_xlabel(f"F1, {label} minus GRPO (mean over seeds, 95% t interval)")
    ax.set_title("Per-group F1 difference at the final checkpoint")
    _save(fig, plt, path)


def plot_train_reward(runs: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    grouped = _by_method(runs)
    methods = list(grouped)
    cols = min(len(methods), 4)
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, method in zip(axes.flat, methods, strict=False):
        for group, (steps, values) in _mean_curves([r["train_reward"] for r in grouped[method]]).items():
            planted = group in ("age=a1", "age=a4")
            ax.plot(steps, values, "-" if planted else "--", lw=1.6 if planted else 1.0, label=group)
        ax.set_title(METHODS[method].label, fontsize=9)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("mean training reward")
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=6)
    fig.suptitle("Training reward (strict accuracy) per demographic group (solid: age a1 and a4)")
    _save(fig, plt, path)


def write_plots(runs: list[dict[str, Any]], results: dict[str, Any], output_dir: Path) -> list[Path]:
    curves = _curves_by_method(runs)
    differences = results["per_group_difference"]
    compared = "fair_grpo" if "fair_grpo" in differences else next(iter(differences), "grpo")
    plots = {
        "curves.png": lambda p: plot_curves(curves, p),
        "pareto.png": lambda p: plot_pareto(curves, p),
        "group_f1_curves.png": lambda p: plot_group_f1_curves(runs, p),
        "group_weights.png": lambda p: plot_group_weights(runs, p),
        "group_f1_difference.png": lambda p: plot_group_difference(results, p, compared),
        "train_reward.png": lambda p: plot_train_reward(runs, p),
    }
    for name, plot in plots.items():
        plot(output_dir / name)
    return [output_dir / name for name in PLOTS]
