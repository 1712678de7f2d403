"""`fair-trl evaluate PRED.jsonl`: the paper's tables for any model's predictions.

Each line of the file is one sample: ``prediction`` (free text, whose final \\boxed{} / <answer> is
used when present, or a label / list of labels), ``reference`` (label, comma-joined labels or a
list), ``dataset``, and the demographic attributes (``age``, ``sex`` by default). Demographics are
normalised as in training (age bins a1-a4, sex F/M); missing or invalid values leave the sample out
of that attribute's groups. Output: a Table 2-style summary (one row per attribute) and the
appendix-style table per dataset and group (Acc F1 TPR FPR FDR, then sigma and Delta columns).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fair_trl.groups import DEFAULT_AGE_BINS, DEFAULT_MAX_AGE, GroupKeyer
from fair_trl.metrics import compute_fairness, dataset_classes, to_label_set
from fair_trl.rewards import extract_answer, matcher_for, parse_prediction

__all__ = [
    "Predictions",
    "Scored",
    "evaluate_file",
    "markdown_report",
    "markdown_tables",
    "read_predictions",
    "score_predictions",
    "text_report",
]

REQUIRED_FIELDS = ("prediction", "reference", "dataset")
# The one group the tables score every sample in when no attribute has a valid value on any line.
ALL_SAMPLES = "all samples"
SUMMARY_COLUMNS = (
    ("PP", "PP"),
    ("EOD", "EOD"),
    ("FPR_diff", "FPR_diff"),
    ("sigma_F1", "sigma_f1"),
    ("delta_F1", "delta_f1"),
    ("sigma_Acc", "sigma_acc"),
    ("delta_Acc", "delta_acc"),
    ("Acc", "acc"),
    ("F1", "f1"),
    ("Acc_ES", "acc_es"),
    ("F1_ES", "f1_es"),
)
GROUP_COLUMNS = (("Acc", "acc"), ("F1", "f1"), ("TPR", "tpr"), ("FPR", "fpr"), ("FDR", "fdr"))
DISPARITY_COLUMNS = (
    ("sigma_Acc", "sigma_acc"),
    ("sigma_F1", "sigma_f1"),
    ("sigma_TPR", "sigma_tpr"),
    ("delta_Acc", "delta_acc"),
    ("delta_F1", "delta_f1"),
    ("delta_TPR", "delta_tpr"),
    ("delta_FPR", "delta_fpr"),
)


@dataclass
class Predictions:
    """The usable samples of a predictions file, as columns, and the line numbers skipped."""

    predictions: list[Any] = field(default_factory=list)
    references: list[Any] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def _check_line(raw: str) -> dict[str, Any]:
    row = json.loads(raw)
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in row]
    if missing:
        raise ValueError(f"missing field(s) {missing}; each line needs {list(REQUIRED_FIELDS)}")
    for name in ("prediction", "reference"):
        value = row[name]
        if value is not None and not isinstance(value, str | list):
            raise ValueError(f"{name!r} must be a string or a list of labels, got {type(value).__name__}")
        if isinstance(value, list):
            bad = next((v for v in value if not isinstance(v, str)), None)
            if bad is not None or None in value:
                raise ValueError(
                    f"{name!r} must list labels as strings, got {bad!r} ({type(bad).__name__}) in {value!r}"
                )
    if not isinstance(row["dataset"], str) or not row["dataset"].strip():
        raise ValueError(f"'dataset' must be a non-empty string, got {row['dataset']!r}")
    if not to_label_set(row["reference"]):
        raise ValueError("'reference' names no label")
    return row


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"not UTF-8 text (byte {data[err.start]:#04x} at position {err.start}); save the file as UTF-8"
        ) from None


def read_predictions(path: str | Path, skip_invalid: bool = False) -> Predictions:
    """Parse a predictions jsonl; a malformed line raises with its line number unless `skip_invalid`."""
    out = Predictions()
    with open(path, "rb") as f:
        for number, data in enumerate(f, start=1):
            try:
                raw = _decode(data)
                if number == 1:
                    raw = raw.removeprefix("\ufeff")  # the byte-order mark some editors start a UTF-8 file with
                if not raw.strip():
                    continue
                row = _check_line(raw)
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                if not skip_invalid:
                    raise ValueError(f"{path}, line {number}: {err}") from None
                out.skipped.append((number, str(err)))
                continue
            out.predictions.append(row["prediction"])
            out.references.append(row["reference"])
            out.datasets.append(row["dataset"].strip())
            out.rows.append(row)
            out.lines.append(number)
    if not out.rows:
        raise ValueError(f"{path}: no usable samples")
    return out


def _labels(value: Any, classes: Sequence[str], exact: bool = False) -> frozenset[str]:
    """The labels `value` names; with `exact` (a declared label set), {} when any part names none of `classes`."""
    if value is None:
        return frozenset()
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    if exact:
        answer = extract_answer(value)
        return matcher_for(classes).match_exact(value.strip() if answer is None else answer)
    return parse_prediction(value, labels=classes)


@dataclass
class Scored:
    """A predictions file as `compute_fairness` reads it: label sets, datasets, classes and each attribute's groups."""

    predictions: list[frozenset[str]]
    references: list[frozenset[str]]
    datasets: list[str]
    classes: dict[str, tuple[str, ...]]
    groups: dict[str, list[str | None]]
    keyer: GroupKeyer


def score_predictions(
    data: Predictions,
    path: str | Path,
    attributes: Sequence[str] = ("age", "sex"),
    age_bins: Sequence[float] = DEFAULT_AGE_BINS,
    max_age: float = DEFAULT_MAX_AGE,
    label_sets: Mapping[str, Sequence[str]] | None = None,
) -> Scored:
    """The one parsing rule of every scorer of predictions files (`evaluate`, `audit`, `compare`).

    `attributes`: demographic columns, ``"name"`` or ``"name:kind"`` as in training; `scored.groups` is keyed
    by name. `label_sets` ({dataset: labels}, as `FairGRPOConfig.label_sets`) are the classes of those
    datasets, and a prediction naming a label outside its set names none (as the reward scores it).
    A reference naming no class of its dataset raises with its line number in `path`.
    """
    declared = dict(label_sets or {})
    classes = {**dataset_classes(data.datasets, data.references), **{
        d: tuple(labels) for d, labels in declared.items() if d in set(data.datasets)
    }}  # fmt: skip
    predictions = [
        _labels(p, classes[d], exact=d in declared) for p, d in zip(data.predictions, data.datasets, strict=True)
    ]
    references = [_labels(r, classes[d]) for r, d in zip(data.references, data.datasets, strict=True)]
    for line, reference, raw, dataset in zip(data.lines, references, data.references, data.datasets, strict=True):
        if not reference:
            raise ValueError(
                f"{path}, line {line}: reference {raw!r} is not a class of {dataset!r}: {classes[dataset]}"
            )
    keyer = GroupKeyer(list(attributes), age_bins, max_age)
    groups = {a: [keyer.attribute(a, row.get(a)) for row in data.rows] for a in keyer.columns}
    return Scored(predictions, references, data.datasets, classes, groups, keyer)


def evaluate_file(
    path: str | Path,
    attributes: Sequence[str] = ("age", "sex"),
    skip_invalid: bool = False,
    n_bootstrap: int = 0,
    seed: int = 0,
    age_bins: Sequence[float] = DEFAULT_AGE_BINS,
    max_age: float = DEFAULT_MAX_AGE,
) -> dict[str, Any]:
    """{"attributes": {attribute: compute_fairness(...)}, "samples": n, "skipped_lines": [...], ...}.

    An attribute with no valid value on any line is listed in "absent_attributes", not scored; when that
    leaves none, "attributes" holds `ALL_SAMPLES`: every sample scored as one group.

    `age_bins` and `max_age` group ages as training did (`FairGRPOConfig.age_bins`, `max_age`).
    """
    data = read_predictions(path, skip_invalid)
    scored = score_predictions(data, path, attributes, age_bins, max_age)
    # An attribute no line has a valid value of would table 0.000 for every score: name it instead.
    # Keyed by column name: an attribute given as "name:kind" is read as "name".
    present = [a for a in scored.groups if any(g is not None for g in scored.groups[a])]
    groups = {a: scored.groups[a] for a in present} or {ALL_SAMPLES: [ALL_SAMPLES] * len(data.rows)}
    results = {
        attribute: compute_fairness(
            scored.predictions,
            scored.references,
            scored.datasets,
            values,
            scored.classes,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        for attribute, values in groups.items()
    }
    return {
        "samples": len(data.rows),
        "skipped_lines": [{"line": n, "error": e} for n, e in data.skipped],
        "no_valid_label": sum(not p for p in scored.predictions),
        "demographics": scored.keyer.summary(),
        "absent_attributes": [a for a in scored.groups if a not in present],
        "attributes": results,
    }


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], int]]:
    """(title, header, rows, label columns) of the summary table and of each attribute's per-group table.

    `results`: {attribute: `compute_fairness` output}.
    """
    summary_rows = [[attribute] + [_fmt(r[key]) for _, key in SUMMARY_COLUMNS] for attribute, r in results.items()]
    tables = [("Summary (Table 2 style)", ["attribute"] + [name for name, _ in SUMMARY_COLUMNS], summary_rows, 1)]
    for attribute, result in results.items():
        rows = []
        for dataset, by_group in result["per_group"].items():
            disparity = result["per_dataset"][dataset]
            for i, (group, scores) in enumerate(by_group.items()):
                cells = [dataset if i == 0 else "", str(group), str(scores["n"])]
                cells += [_fmt(scores[key]) for _, key in GROUP_COLUMNS]
                cells += [_fmt(disparity[key]) if i == 0 else "" for _, key in DISPARITY_COLUMNS]
                rows.append(cells)
        header = ["dataset", "group", "n"] + [n for n, _ in GROUP_COLUMNS] + [n for n, _ in DISPARITY_COLUMNS]
        tables.append((f"Per dataset and {attribute} group", header, rows, 2))
    return tables


def _footer(report: dict[str, Any]) -> list[str]:
    lines = [f"{report['samples']} samples; {report['no_valid_label']} predictions name no valid label."]
    if report["skipped_lines"]:
        lines.append(f"{len(report['skipped_lines'])} malformed line(s) skipped.")
    absent = report.get("absent_attributes") or []
    if absent:
        lines.append(
            f"{', '.join(absent)}: no line has a valid value (field absent or invalid), so no groups for "
            f"{'it' if len(absent) == 1 else 'them'}."
        )
    if ALL_SAMPLES in report["attributes"]:
        lines.append("No attribute to group by: the tables score all samples as one group.")
    for attribute, result in report["attributes"].items():
        if result["n_unknown_group"]:
            lines.append(
                f"{attribute}: {result['n_unknown_group']} samples with unknown {attribute} left out of groups."
            )
    return lines


def text_report(report: dict[str, Any]) -> str:
    out = []
    for title, header, rows, lead in _tables(report["attributes"]):
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

        def line(cells: list[str], widths: list[int] = widths, lead: int = lead) -> str:
            padded = [
                c.ljust(w) if i < lead else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(padded).rstrip()

        out += [title, line(header), *(line(row) for row in rows), ""]
    return "\n".join(out + _footer(report)) + "\n"


def markdown_tables(results: dict[str, Any]) -> list[str]:
    """Markdown lines of the summary table and the per-group tables; `results`: {attribute: compute_fairness output}."""
    out = []
    for title, header, rows, _ in _tables(results):
        out += [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out.append("")
    return out


def markdown_report(report: dict[str, Any]) -> str:
    return "\n".join(markdown_tables(report["attributes"]) + _footer(report)) + "\n"


def to_json(report: dict[str, Any]) -> str:
    # Group keys may be non-strings in principle; JSON needs strings.
    return json.dumps(report, indent=2, default=str, sort_keys=False)
