"""The audit's report: `fair-trl evaluate`'s numbers on ``OUT/predictions.jsonl``, with bootstrap intervals.

The predictions file is read and scored exactly as ``fair-trl evaluate`` reads it (`score_predictions`,
`compute_fairness`), so ``fair-trl evaluate OUT/predictions.jsonl`` prints the same point estimates. On
top: 95% intervals for the summary metrics and for every group's F1 (one set of resamples, drawn within
each dataset as `compute_fairness` draws them), the worst group's label confusion, the counts of what
could not be scored, ``OUT/fairness.json``, ``OUT/report.md`` and the plots.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fair_trl.evaluate import Predictions, Scored, markdown_tables, read_predictions, score_predictions
from fair_trl.groups import DEFAULT_AGE_BINS, DEFAULT_MAX_AGE
from fair_trl.metrics import SUMMARY_KEYS, bootstrap_summaries, compute_fairness

__all__ = [
    "FAIRNESS_FILE",
    "NO_VALID_LABEL",
    "PLOT_FILES",
    "REPORT_FILE",
    "audit_report",
    "interval",
    "label_confusion",
    "score",
    "write_report",
]

logger = logging.getLogger(__name__)

FAIRNESS_FILE = "fairness.json"
REPORT_FILE = "report.md"
PLOT_FILES = {
    "group_f1": "group_f1.png",
    "heatmap": "f1_heatmap.png",
    "confusion": "worst_group_confusion.png",
}
NO_VALID_LABEL = "(no valid label)"
CONFIDENCE = 0.95
# The worst group is looked for among groups with at least this many rows first: a group of two rows
# scoring 0 says little about the model.
MIN_WORST_GROUP_ROWS = 5
_LISTED_ROWS = 20
_SUMMARY_SHOWN = (("F1", "f1"), ("Acc", "acc"), ("delta_F1", "delta_f1"), ("EOD", "EOD"), ("PP", "PP"),
                  ("FPR_diff", "FPR_diff"), ("F1_ES", "f1_es"))  # fmt: skip


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile interval of bootstrap draws (None without draws), as `compute_fairness` computes its ``ci``."""
    if not len(values):
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def label_confusion(
    predictions: Sequence[frozenset[str]], references: Sequence[frozenset[str]], classes: Sequence[str]
) -> dict[str, Any]:
    """Counts of (reference label, predicted label) pairs; an answer naming no class is `NO_VALID_LABEL`.

    A multi-label row adds one count for every pair of its reference and predicted labels.
    """
    predicted_names = [*classes, NO_VALID_LABEL]
    counts = np.zeros((len(classes), len(predicted_names)), dtype=int)
    row_of = {c: i for i, c in enumerate(classes)}
    for predicted, reference in zip(predictions, references, strict=True):
        named = [p for p in predicted if p in row_of] or [NO_VALID_LABEL]
        for truth in reference:
            for label in named:
                counts[row_of[truth], predicted_names.index(label)] += 1
    return {"labels": list(classes), "predicted": predicted_names, "counts": counts.tolist()}


def score(
    data: Predictions,
    path: str | Path,
    attributes: Sequence[str],
    age_bins: Sequence[float] | None = None,
    max_age: float | None = None,
    label_sets: Mapping[str, Sequence[str]] | None = None,
) -> Scored:
    """`score_predictions` with the training defaults for the age bins and the largest valid age."""
    bins = DEFAULT_AGE_BINS if age_bins is None else age_bins
    max_age = DEFAULT_MAX_AGE if max_age is None else max_age
    return score_predictions(data, path, attributes, bins, max_age, label_sets)


def _worst_cell(result: Mapping[str, Any]) -> tuple[str, str] | None:
    cells = [(d, g, s) for d, groups in result["per_group"].items() for g, s in groups.items()]
    if not cells:
        return None
    large = [c for c in cells if c[2]["n"] >= MIN_WORST_GROUP_ROWS] or cells
    dataset, group, _ = min(large, key=lambda c: (c[2]["f1"], -c[2]["n"], c[0], str(c[1])))
    return dataset, group


def audit_report(
    predictions_path: str | Path,
    attributes: Sequence[str] = ("age", "sex"),
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    age_bins: Sequence[float] | None = None,
    max_age: float | None = None,
    label_sets: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """`fair-trl evaluate`'s report of `predictions_path` plus intervals, per-group F1 intervals and confusion.

    Keys: those of `evaluate_file` (``attributes`` with ``ci`` when `n_bootstrap` > 0), plus
    ``group_f1_ci[attribute][dataset][group]`` and ``group_values_f1_ci[attribute][group]`` (None for a group
    missing from every resample), ``worst_group[attribute]`` (dataset, group, F1 and its label confusion),
    ``empty_generations`` and ``bootstrap``.
    """
    data = read_predictions(predictions_path)
    scored = score(data, predictions_path, attributes, age_bins, max_age, label_sets)
    results, group_ci, overall_ci, worst = {}, {}, {}, {}
    for attribute, groups in scored.groups.items():
        result = compute_fairness(scored.predictions, scored.references, scored.datasets, groups, scored.classes)
        draws = [
            d[0]
            for d in bootstrap_summaries(
                [scored.predictions],
                scored.references,
                scored.datasets,
                groups,
                scored.classes,
                n_bootstrap=n_bootstrap,
                seed=seed,
            )  # fmt: skip
        ]
        if draws:
            result["ci"] = {key: interval([d["summary"][key] for d in draws]) for key in SUMMARY_KEYS}
        group_ci[attribute] = {
            dataset: {g: interval([d["per_group"][dataset][g]["f1"] for d in draws if g in d["per_group"][dataset]])
                      for g in by_group}
            for dataset, by_group in result["per_group"].items()
        }  # fmt: skip
        overall_ci[attribute] = {
            group: interval([d["group_values"][group]["f1"] for d in draws if group in d["group_values"]])
            for group in result["group_values"]
        }
        cell = _worst_cell(result)
        if cell is not None:
            dataset, group = cell
            rows = [i for i, (d, g) in enumerate(zip(scored.datasets, groups, strict=True)) if (d, g) == cell]
            worst[attribute] = {
                "dataset": dataset,
                "group": group,
                "n": result["per_group"][dataset][group]["n"],
                "f1": result["per_group"][dataset][group]["f1"],
                "confusion": label_confusion(
                    [scored.predictions[i] for i in rows], [scored.references[i] for i in rows], scored.classes[dataset]
                ),
            }
        results[attribute] = result
    return {
        "samples": len(data.rows),
        "skipped_lines": [{"line": n, "error": e} for n, e in data.skipped],
        "no_valid_label": sum(not p for p in scored.predictions),
        "empty_generations": sum(not str(p or "").strip() for p in data.predictions),
        "demographics": scored.keyer.summary(),
        "attributes": results,
        "group_f1_ci": group_ci,
        "group_values_f1_ci": overall_ci,
        "worst_group": worst,
        "bootstrap": {"resamples": n_bootstrap, "confidence": CONFIDENCE, "seed": seed},
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _with_interval(value: float, ci: Sequence[float] | None) -> str:
    return _fmt(value) if ci is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """Markdown table: one row per attribute, each metric with its 95% interval when there is one."""
    lines = ["| attribute | " + " | ".join(name for name, _ in _SUMMARY_SHOWN) + " |"]
    lines.append("|" + "---|" * (len(_SUMMARY_SHOWN) + 1))
    for attribute, result in report["attributes"].items():
        ci = result.get("ci", {})
        cells = [_with_interval(result[key], ci.get(key)) for _, key in _SUMMARY_SHOWN]
        lines.append(f"| {attribute} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: Mapping[str, Any], audit: Mapping[str, Any] | None = None) -> str:
    audit = dict(audit or {})
    settings = audit.get("settings", {})
    title = f"Fairness audit of `{settings['model']}`" if settings.get("model") else "Fairness audit"
    lines = [f"# {title}", ""]
    if settings:
        options = settings.get("dataset_options") or {}
        data = settings["dataset"] + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
        decoding = "greedy" if not settings.get("temperature") else f"sampled at temperature {settings['temperature']}"
        lines += [
            f"- **Data:** {data}, split `{settings['split']}`",
            f"- **Generation:** backend `{settings['backend']}`, {decoding}, at most {settings['max_new_tokens']} "
            f"new tokens, batches of {settings.get('batch_size')}",
        ]
    image_errors = audit.get("image_errors", [])
    no_reference = audit.get("no_reference", [])
    lines += [
        f"- **Rows scored:** {report['samples']}; {len(image_errors)} not answered because their image did not "
        f"decode; {len(no_reference)} without a reference (`solution`) left out",
        f"- **Answers:** {report['empty_generations']} empty generations; {report['no_valid_label']} answers name "
        "no valid label (negative for every class, as in training)",
    ]
    boot = report["bootstrap"]
    lines += ["", f"## Summary, with {boot['confidence']:.0%} bootstrap intervals ({boot['resamples']} resamples)", ""]
    lines += summary_lines(report)
    lines += [""] + markdown_tables(report["attributes"])
    lines += ["## Plots", ""]
    if audit.get("plots_skipped"):
        lines += [audit["plots_skipped"], ""]
    for name, file in PLOT_FILES.items():
        if audit.get("plots", {}).get(name):
            lines += [f"![{name}]({file})", ""]
    for attribute, worst in report["worst_group"].items():
        lines.append(
            f"Worst {attribute} group: {worst['group']} on {worst['dataset']} (F1 {worst['f1']:.3f}, n={worst['n']})."
        )
    if image_errors:
        lines += ["", "## Rows whose image did not decode", ""]
        lines += [f"- row `{row_id}`: {reason}" for row_id, reason in image_errors[:_LISTED_ROWS]]
        if len(image_errors) > _LISTED_ROWS:
            lines.append(f"- ... and {len(image_errors) - _LISTED_ROWS} more (all in {FAIRNESS_FILE})")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path,
    report: Mapping[str, Any],
    audit: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """``fairness.json``, the plots and ``report.md`` in `out_dir`; returns the paths written by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    audit = dict(audit or {})
    from fair_trl.audit import plots as plotting

    if plots and not plotting.plotting_available():
        logger.warning(plotting.NO_MATPLOTLIB)
        audit["plots_skipped"] = plotting.NO_MATPLOTLIB
    elif plots:
        drawn = {
            "group_f1": plotting.plot_group_f1(report, out / PLOT_FILES["group_f1"]),
            "heatmap": plotting.plot_f1_heatmap(report, out / PLOT_FILES["heatmap"]),
            "confusion": plotting.plot_worst_group_confusion(report, out / PLOT_FILES["confusion"]),
        }
        written.update({k: v for k, v in drawn.items() if v is not None})
    audit["plots"] = {k: str(v.name) for k, v in written.items()}
    payload = {**report, "audit": audit}
    _write(out / FAIRNESS_FILE, json.dumps(payload, indent=2, default=str) + "\n")
    _write(out / REPORT_FILE, render_markdown(report, audit))
    written.update({"fairness": out / FAIRNESS_FILE, "report": out / REPORT_FILE})
    return written


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
