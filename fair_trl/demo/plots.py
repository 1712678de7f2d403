"""The demo's PNG plots (matplotlib, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fair_trl.demo.experiment import METHODS
from fair_trl.demo.stats import checkpoint_metrics

__all__ = ["write_plots"]

MAIN_STYLE = {"main": "-", "control": ":", "variant": "--", "baseline": "-."}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in CI and in worker processes
    import matplotlib.pyplot as plt

    return plt


def _curves_by_method(runs: list[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """{method: {"step": steps, metric: array seeds x checkpoints}} of the headline metrics."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        grouped[run["method"]].append(run)
    out = {}
    for method, method_runs in grouped.items():
        steps = np.array([c["step"] for c in method_runs[0]["checkpoints"]])
        per_seed = [[checkpoint_metrics(c) for c in r["checkpoints"]] for r in method_runs]
        out[method] = {"step": steps} | {
            name: np.array([[m[name] for m in seed] for seed in per_seed]) for name in per_seed[0][0]
        }
    return out


def plot_curves(curves: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("f1", "F1"), ("acc", "Accuracy"), ("delta_f1", "ΔF1 (lower is fairer)"))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for method, c in curves.items():
            mean, std = c[metric].mean(axis=0), c[metric].std(axis=0)
            (line,) = ax.plot(c["step"], mean, MAIN_STYLE[METHODS[method].role], label=METHODS[method].label)
            ax.fill_between(c["step"], mean - std, mean + std, color=line.get_color(), alpha=0.12)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Test-split metrics against training step (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    points, owners = [], []
    for method, c in curves.items():
        xs, ys = c["delta_f1"].mean(axis=0), c["f1"].mean(axis=0)
        ax.scatter(xs[1:], ys[1:], s=18 + 40 * c["step"][1:] / c["step"][-1], label=METHODS[method].label, alpha=0.8)
        points += list(zip(xs[1:], ys[1:], strict=True))
        owners += [method] * (len(xs) - 1)
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k-", lw=1, label="Pareto frontier")
    ax.set_xlabel("ΔF1 (mean of age and sex; lower is fairer)")
    ax.set_ylabel("F1")
    ax.set_title("Performance-fairness trade-off over checkpoints (later = larger marker)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_group_difference(results: dict[str, Any], path: Path, method: str = "fair_grpo") -> None:
    plt = _pyplot()
    cells = results["per_group_difference"].get(method, {})
    names = [n for n, d in cells.items() if np.isfinite(d["mean"])]
    fig, ax = plt.subplots(figsize=(8, 0.22 * max(len(names), 4) + 1.5))
    means = np.array([cells[n]["mean"] for n in names])
    lows = np.array([cells[n]["ci"][0] for n in names])
    highs = np.array([cells[n]["ci"][1] for n in names])
    y = np.arange(len(names))
    colors = ["tab:green" if m >= 0 else "tab:red" for m in means]
    ax.barh(y, means, color=colors, alpha=0.7)
    finite = np.isfinite(lows) & np.isfinite(highs)
    ax.errorbar(means[finite], y[finite], xerr=[means[finite] - lows[finite], highs[finite] - means[finite]],
                fmt="none", ecolor="k", lw=0.8)  # fmt: skip
    ax.set_yticks(y, names, fontsize=6)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"F1, {METHODS[method].label} minus GRPO (mean over seeds, 95% t interval)")
    ax.set_title("Per-group F1 difference at the final checkpoint")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_curves(series: list[dict[str, list[list[float]]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Average {group: [[step, value], ...]} over runs, step by step."""
    merged: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in series:
        for group, points in s.items():
            for step, value in points:
                merged[group][step].append(value)
    return {g: (np.array(sorted(v)), np.array([np.mean(v[k]) for k in sorted(v)])) for g, v in sorted(merged.items())}


def plot_group_curves(runs: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    methods = list(dict.fromkeys(r["method"] for r in runs))
    cols = min(len(methods), 4)
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, method in zip(axes.flat, methods, strict=False):
        curves = _mean_curves([r["train_reward"] for r in runs if r["method"] == method])
        for group, (steps, values) in curves.items():
            planted = group in ("age=a1", "age=a4")
            ax.plot(steps, values, "-" if planted else "--", lw=1.6 if planted else 1.0, label=group)
        ax.set_title(METHODS[method].label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("mean training reward")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle("Training reward per demographic group (solid: planted-disadvantaged age groups)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scale_factors(runs: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    methods = [m for m in dict.fromkeys(r["method"] for r in runs) if any(r["scale_factors"] for r in runs
               if r["method"] == m)]  # fmt: skip
    if not methods:
        methods = ["(no FairGRPO run)"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.6), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods, strict=False):
        series = []
        for run in (r for r in runs if r["method"] == method):
            by_group: dict[str, list[list[float]]] = defaultdict(list)
            for entry in run["scale_factors"]:
                for group, weight in entry["group_weight"].items():
                    by_group[group].append([entry["step"], weight])
            series.append(by_group)
        for group, (steps, values) in _mean_curves(series).items():
            ax.plot(steps, values, lw=1, label=group)
        ax.set_yscale("log")
        ax.set_title(METHODS[method].label if method in METHODS else method, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("advantage weight 1/(T_g T_γ σ)")
    axes[0, 0].legend(fontsize=5, ncol=2)
    fig.suptitle("FairGRPO scale factors per demographic group (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(runs: list[dict[str, Any]], results: dict[str, Any], output_dir: Path) -> list[Path]:
    curves = _curves_by_method(runs)
    paths = {
        "curves.png": lambda p: plot_curves(curves, p),
        "pareto.png": lambda p: plot_pareto(curves, p),
        "group_f1_difference.png": lambda p: plot_group_difference(
            results, p, "fair_grpo" if "fair_grpo" in results["per_group_difference"] else
            next(iter(results["per_group_difference"]), "fair_grpo")),
        "group_curves.png": lambda p: plot_group_curves(runs, p),
        "scale_factors.png": lambda p: plot_scale_factors(runs, p),
    }  # fmt: skip
    written = []
    for name, plot in paths.items():
        plot(output_dir / name)
        written.append(output_dir / name)
    return written
