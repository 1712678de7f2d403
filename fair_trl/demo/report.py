"""reports/demo/: results.json, report.md and the plots, from the demo's runs.

`write_report` can be called again on a saved ``runs.json`` (``fair_trl.demo.report.rebuild``), so the
write-up can change without training again.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fair_trl.demo.experiment import ATTRIBUTES, METHODS, ExperimentSettings
from fair_trl.demo.stats import (
    HEADLINE_METRICS,
    excludes_zero,
    final_metrics,
    paired_difference,
    seed_summary,
)

__all__ = ["AIM", "analyse", "rebuild", "summary_markdown", "write_report"]

# The target the demo is judged by: Delta F1 at least 30% below GRPO's, mean F1 at most 0.01 lower,
# and an interval on the Delta F1 difference that excludes zero.
AIM = {"delta_f1_reduction": 0.30, "max_f1_drop": 0.01}
PLANTED_NOTE = (
    "Planted disadvantaged groups: age a1 and a4 in every domain, sex F in HAM10000, ISIC 2020 and Hemorrhage "
    "(their images use a shifted label-to-cell rule 35% of the time and 4x the pixel noise)."
)


def _by_method(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        grouped[run["method"]].append(run)
    for method_runs in grouped.values():
        method_runs.sort(key=lambda r: r["seed"])
    return grouped


def analyse(runs: list[dict[str, Any]], settings: ExperimentSettings) -> dict[str, Any]:
    """results.json: per-method summaries over seeds, differences to GRPO, the verdict, the settings."""
    grouped = _by_method(runs)
    finals = {m: [final_metrics(r) for r in rs] for m, rs in grouped.items()}
    reference = finals["grpo"]
    methods: dict[str, Any] = {}
    for method, values in finals.items():
        entry: dict[str, Any] = {
            name: seed_summary([v[name] for v in values], settings.n_bootstrap) for name in HEADLINE_METRICS
        }
        entry["label"] = METHODS[method].label
        entry["role"] = METHODS[method].role
        entry["by_attribute"] = {
            attribute: {
                key: seed_summary([r["checkpoints"][-1][attribute][key] for r in grouped[method]], 0)
                for key in ("f1", "delta_f1", "EOD", "PP")
            }
            for attribute in ATTRIBUTES
        }
        entry["group_f1"] = _group_f1(grouped[method])
        if method != "grpo":
            entry["vs_grpo"] = _versus(values, reference)
        methods[method] = entry
    return {
        "methods": methods,
        "per_group_difference": {m: _per_group_difference(grouped[m], grouped["grpo"]) for m in grouped if m != "grpo"},
        "verdict": _verdict(methods),
        "settings": {**settings.to_dict(), "benchmark": "SyntheticConfig defaults", "planted": PLANTED_NOTE},
    }


def _versus(values: list[dict[str, float]], reference: list[dict[str, float]]) -> dict[str, Any]:
    out = {
        name: paired_difference([v[name] for v in values], [r[name] for r in reference]) for name in HEADLINE_METRICS
    }
    base = float(np.mean([r["delta_f1"] for r in reference]))
    diff = out["delta_f1"]
    out["delta_f1_relative"] = {
        "mean": diff["mean"] / base if base > 0 else float("nan"),
        "ci": [c / base if base > 0 else float("nan") for c in diff["ci"]],
    }
    return out


def _group_f1(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{attribute: {group: summary over seeds of the group's F1 (averaged over its datasets)}}."""
    out: dict[str, dict[str, Any]] = {}
    for attribute in ATTRIBUTES:
        groups = sorted({g for r in runs for g in r["checkpoints"][-1][attribute]["group_f1"]})
        out[attribute] = {
            g: seed_summary([r["checkpoints"][-1][attribute]["group_f1"].get(g, np.nan) for r in runs], 0)
            for g in groups
        }
    return out


def _per_group_difference(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired F1 difference to GRPO of every (dataset, attribute, group) cell (the paper's Fig. 3)."""
    cells: dict[str, Any] = {}
    for attribute in ATTRIBUTES:
        final = [r["checkpoints"][-1][attribute]["per_group_f1"] for r in runs]
        base = [r["checkpoints"][-1][attribute]["per_group_f1"] for r in reference]
        for dataset in sorted(final[0]):
            for group in sorted(final[0][dataset]):
                ours = [f.get(dataset, {}).get(group, np.nan) for f in final]
                theirs = [b.get(dataset, {}).get(group, np.nan) for b in base]
                cells[f"{dataset}/{attribute}={group}"] = paired_difference(ours, theirs)
    return cells


def _verdict(methods: dict[str, Any]) -> dict[str, Any]:
    def meets(entry: dict[str, Any]) -> bool:
        vs = entry["vs_grpo"]
        return bool(
            vs["delta_f1_relative"]["mean"] <= -AIM["delta_f1_reduction"]
            and vs["f1"]["mean"] >= -AIM["max_f1_drop"]
            and vs["delta_f1"]["ci"][1] < 0
        )

    reaching = [m for m, e in methods.items() if m != "grpo" and e["role"] != "control" and meets(e)]
    control = methods.get("oracle_oversampling")
    control_detects = (
        None
        if control is None
        else excludes_zero(control["vs_grpo"]["delta_f1"]["ci"]) and (control["vs_grpo"]["delta_f1"]["mean"] < 0)
    )
    lines = []
    if control is None:
        lines.append(
            "No positive control was run, so a null result cannot be told apart from an insensitive benchmark."
        )
    else:
        vs = control["vs_grpo"]["delta_f1"]
        lines.append(
            f"Positive control (oracle oversampling): Delta F1 {vs['mean']:+.3f} vs GRPO "
            f"(95% CI {vs['ci'][0]:+.3f} to {vs['ci'][1]:+.3f}): "
            + (
                "the benchmark detects a gap reduction at this budget."
                if control_detects
                else "no gap reduction detected, so at this budget the benchmark cannot show one; read the "
                "FairGRPO rows with that in mind."
            )
        )
    if reaching:
        names = ", ".join(methods[m]["label"] for m in reaching)
        lines.append(f"Aim reached (Delta F1 >= 30% below GRPO, F1 at most 0.01 lower, interval excluding 0): {names}.")
    else:
        lines.append("Aim not reached: no method cuts Delta F1 by >= 30% vs GRPO at <= 0.01 lower F1 with an interval "
                     "on the Delta F1 difference that excludes zero.")  # fmt: skip
    return {"methods_reaching_aim": reaching, "positive_control_detects": control_detects, "text": "\n".join(lines)}


# ---------------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------------


def _pm(summary: dict[str, Any]) -> str:
    return f"{summary['mean']:.3f} ± {summary['std']:.3f} [{summary['ci'][0]:.3f}, {summary['ci'][1]:.3f}]"


def _diff(d: dict[str, Any]) -> str:
    star = " *" if excludes_zero(d["ci"]) else ""
    return f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]{star}"


def _relative(rel: dict[str, Any]) -> str:
    return f"{rel['mean']:+.0%} [{rel['ci'][0]:+.0%}, {rel['ci'][1]:+.0%}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(results: dict[str, Any], train_seconds: float | None = None) -> str:
    methods = results["methods"]
    settings = results["settings"]
    lines = ["# GRPO vs FairGRPO on the synthetic clinical benchmark", ""]
    lines += [
        "Reproduce: `make demo` (or `fair-trl demo`). Settings: "
        f"{len(settings['methods'])} methods x {settings['seeds']} seeds, {settings['steps']} steps of "
        f"{settings['prompts_per_step']} prompts x {settings['num_generations']} completions, learning rate "
        f"{settings['learning_rate']}, synthetic benchmark at its defaults ({settings['num_rows']} rows, data seed "
        f"{settings['data_seed']}), test split evaluated greedily every {settings['eval_every']} steps."
        + (f" Training took {train_seconds / 60:.1f} min." if train_seconds else ""),
        "",
        PLANTED_NOTE,
        "",
        "## Verdict",
        "",
        *results["verdict"]["text"].splitlines(),
        "",
        "## Table 2: final checkpoint, mean ± std over seeds [95% bootstrap interval of the mean]",
        "",
        "F1 and accuracy are the suite's (per-dataset group means); Delta F1, EOD and PP are each averaged over "
        "the age and sex attributes.",
        "",
    ]
    lines += _table(
        ["method", "F1", "Acc", "ΔF1", "EOD", "PP"],
        [[e["label"], *(_pm(e[k]) for k in ("f1", "acc", "delta_f1", "eod", "pp"))] for e in methods.values()],
    )
    lines += [
        "",
        "## Differences to GRPO (paired by seed; 95% t interval; * = excludes 0)",
        "",
    ]
    rows = []
    for e in methods.values():
        if "vs_grpo" not in e:
            continue
        vs = e["vs_grpo"]
        rel = vs["delta_f1_relative"]
        rows.append(
            [
                e["label"],
                e["role"],
                _diff(vs["delta_f1"]),
                _relative(rel),
                _diff(vs["f1"]),
                _diff(vs["acc"]),
                _diff(vs["eod"]),
                _diff(vs["pp"]),
            ]
        )
    lines += _table(["method", "role", "ΔF1 diff", "ΔF1 change", "F1 diff", "Acc diff", "EOD diff", "PP diff"], rows)
    lines += ["", "Ablation: the `variant` rows change one thing in FairGRPO each:", ""]
    lines += [f"- {METHODS[m].label}: {METHODS[m].description}" for m in methods if METHODS[m].role == "variant"]
    lines += ["", "## ΔF1 per attribute (mean ± std over seeds)", ""]
    lines += _table(
        ["method", *(f"ΔF1 {a}" for a in ATTRIBUTES), *(f"EOD {a}" for a in ATTRIBUTES)],
        [
            [
                e["label"],
                *(f"{e['by_attribute'][a]['delta_f1']['mean']:.3f} ± {e['by_attribute'][a]['delta_f1']['std']:.3f}"
                  for a in ATTRIBUTES),
                *(f"{e['by_attribute'][a]['EOD']['mean']:.3f} ± {e['by_attribute'][a]['EOD']['std']:.3f}"
                  for a in ATTRIBUTES),
            ]
            for e in methods.values()
        ],
    )  # fmt: skip
    lines += ["", "## Per-group F1 (final checkpoint, mean over seeds; group F1 averaged over its datasets)", ""]
    groups = [(a, g) for a in ATTRIBUTES for g in methods["grpo"]["group_f1"][a]]
    lines += _table(
        ["method", *(f"{a}={g}" for a, g in groups)],
        [[e["label"], *(f"{e['group_f1'][a].get(g, {'mean': float('nan')})['mean']:.3f}" for a, g in groups)]
         for e in methods.values()],
    )  # fmt: skip
    lines += [
        "",
        "## Plots",
        "",
        "- `curves.png`: F1, accuracy and ΔF1 on the test split against step (the paper's Fig. 2 a-c).",
        "- `pareto.png`: F1 against ΔF1 at every checkpoint, with the Pareto frontier (Fig. 2 e).",
        "- `group_f1_difference.png`: per-group F1, FairGRPO minus GRPO, per dataset (Fig. 3).",
        "- `group_curves.png`: training reward per demographic group against step, per method.",
        "- `scale_factors.png`: the weight FairGRPO gave each demographic group's prompts against step.",
        "",
        "![curves](curves.png)",
        "![pareto](pareto.png)",
        "![group F1 difference](group_f1_difference.png)",
        "![group curves](group_curves.png)",
        "![scale factors](scale_factors.png)",
        "",
    ]
    return "\n".join(lines)


def summary_markdown(results: dict[str, Any]) -> str:
    """The short results table quoted in the project README (also written as summary.md)."""
    settings = results["settings"]
    rows = []
    for e in results["methods"].values():
        vs = e.get("vs_grpo")
        change = _relative(vs["delta_f1_relative"]) if vs else "-"
        f1_diff = _diff(vs["f1"]) if vs else "-"
        rows.append(
            [
                e["label"],
                f"{e['f1']['mean']:.3f} ± {e['f1']['std']:.3f}",
                f"{e['delta_f1']['mean']:.3f} ± {e['delta_f1']['std']:.3f}",
                f"{e['eod']['mean']:.3f} ± {e['eod']['std']:.3f}",
                f"{e['pp']['mean']:.3f} ± {e['pp']['std']:.3f}",
                change,
                f1_diff,
            ]
        )
    lines = [
        f"{settings['seeds']} seeds x {settings['steps']} steps per method, mean ± std over seeds; changes are paired "
        "by seed against GRPO with 95% t intervals (* = excludes 0).",
        "",
        *_table(["method", "F1", "ΔF1", "EOD", "PP", "ΔF1 vs GRPO", "F1 vs GRPO"], rows),
        "",
        *results["verdict"]["text"].splitlines(),
    ]
    return "\n".join(lines) + "\n"


def write_report(
    runs: list[dict[str, Any]], settings: ExperimentSettings, output_dir: str | Path, train_seconds: float | None = None
) -> dict[str, Any]:
    from fair_trl.demo.plots import write_plots

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = analyse(runs, settings)
    if train_seconds is not None:
        results["settings"]["train_seconds"] = round(train_seconds, 1)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "report.md").write_text(markdown(results, train_seconds))
    (output_dir / "summary.md").write_text(summary_markdown(results))
    write_plots(runs, results, output_dir)
    return results


def rebuild(output_dir: str | Path) -> dict[str, Any]:
    """Rewrite the report and plots from the runs.json of an earlier demo."""
    saved = json.loads((Path(output_dir) / "runs.json").read_text())
    settings = ExperimentSettings(**saved["settings"])
    return write_report(saved["runs"], settings, output_dir, train_seconds=saved.get("train_seconds"))
