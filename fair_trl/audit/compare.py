"""`fair-trl compare A/predictions.jsonl B/predictions.jsonl`: is model B fairer than model A, per group?

Both files must answer the same rows: they are matched by ``id`` and every matched row must have the
same reference, dataset and demographics, or the comparison stops at the first row that differs. Each
bootstrap resample draws the same rows for both models (within each dataset), so every difference
B - A comes with a paired interval: per group F1 (the paper's Fig. 3), and the change in F1, ΔF1, EOD
and PP. One verdict line per attribute reads the ΔF1 interval (fairer, less fair, or no detectable
change) and says what happened to F1 meanwhile.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fair_trl.audit.report import CONFIDENCE, interval, score
from fair_trl.evaluate import Predictions, read_predictions
from fair_trl.groups import column_names
from fair_trl.metrics import bootstrap_summaries, compute_fairness

__all__ = ["CHANGED_METRICS", "COMPARE_FILES", "align", "compare_files", "render_markdown", "write_comparison"]

logger = logging.getLogger(__name__)

# (shown name, compute_fairness key): the summary metrics whose change is reported.
CHANGED_METRICS = (("F1", "f1"), ("Acc", "acc"), ("delta_F1", "delta_f1"), ("EOD", "EOD"), ("PP", "PP"),
                   ("FPR_diff", "FPR_diff"))  # fmt: skip
COMPARE_FILES = {"json": "compare.json", "markdown": "compare.md", "plot": "group_f1_difference.png"}


def _by_id(data: Predictions, path: str | Path) -> dict[str, int]:
    index: dict[str, int] = {}
    for position, (row, line) in enumerate(zip(data.rows, data.lines, strict=True)):
        if "id" not in row:
            raise ValueError(f"{path}, line {line}: no 'id'; compare matches rows by id (fair-trl audit writes one)")
        row_id = str(row["id"])
        if row_id in index:
            raise ValueError(f"{path}, line {line}: row id {row_id!r} appears twice")
        index[row_id] = position
    return index


def align(a: Predictions, a_path: str | Path, b: Predictions, b_path: str | Path, attributes: Sequence[str]) -> None:
    """Reorder `b` in place to `a`'s row order; raise at the first row that is not the same in both."""
    a_ids, b_ids = _by_id(a, a_path), _by_id(b, b_path)
    for row_id, position in a_ids.items():
        if row_id not in b_ids:
            raise ValueError(
                f"row id {row_id!r} (line {a.lines[position]} of {a_path}) is not in {b_path}: both files must answer "
                f"the same rows ({len(a_ids)} in A, {len(b_ids)} in B)"
            )
        row_a, row_b = a.rows[position], b.rows[b_ids[row_id]]
        for name in ("reference", "dataset", *attributes):
            if row_a.get(name) != row_b.get(name):
                raise ValueError(
                    f"row id {row_id!r} differs in {name!r}: {row_a.get(name)!r} in {a_path} (line "
                    f"{a.lines[position]}), {row_b.get(name)!r} in {b_path} (line {b.lines[b_ids[row_id]]}); "
                    "compare needs two models' answers to the same rows"
                )
    extra = next((i for i in b_ids if i not in a_ids), None)
    if extra is not None:
        raise ValueError(
            f"row id {extra!r} (line {b.lines[b_ids[extra]]} of {b_path}) is not in {a_path}: both files must answer "
            f"the same rows ({len(a_ids)} in A, {len(b_ids)} in B)"
        )
    order = [b_ids[row_id] for row_id in a_ids]
    for name in ("predictions", "references", "datasets", "rows", "lines"):
        values = getattr(b, name)
        setattr(b, name, [values[i] for i in order])


def _change(a: float, b: float, draws: Sequence[float]) -> dict[str, Any]:
    return {"a": a, "b": b, "change": b - a, "ci": interval(draws)}


def _excludes_zero(ci: Sequence[float] | None) -> bool:
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def verdict(attribute: str, changes: Mapping[str, Mapping[str, Any]]) -> str:
    """One line: B against A on `attribute`, read from the ΔF1 and F1 change intervals."""
    gap, f1 = changes["delta_f1"], changes["f1"]

    def said(c: Mapping[str, Any]) -> str:
        ci = c["ci"]
        where = f", {CONFIDENCE:.0%} CI [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        return f"{c['a']:.3f} -> {c['b']:.3f} ({c['change']:+.3f}{where})"

    if gap["ci"] is None:
        head = f"{attribute}: ΔF1 {said(gap)}; no bootstrap interval, so no verdict"
    elif _excludes_zero(gap["ci"]):
        head = f"{attribute}: B is {'fairer' if gap['change'] < 0 else 'less fair'} than A: ΔF1 {said(gap)}"
    else:
        head = f"{attribute}: no detectable change in fairness: ΔF1 {said(gap)}, the interval includes 0"
    if _excludes_zero(f1["ci"]):
        tail = f"F1 {'rose' if f1['change'] > 0 else 'fell'}: {said(f1)}"
    else:
        tail = f"F1 unchanged within its interval: {said(f1)}"
    return f"{head}; {tail}."


def compare_files(
    a_path: str | Path,
    b_path: str | Path,
    attributes: Sequence[str] = ("age", "sex"),
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    age_bins: Sequence[float] | None = None,
    max_age: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The comparison of B against A: per attribute, per-group F1 differences, metric changes and a verdict."""
    if n_bootstrap < 1:
        raise ValueError(
            f"compare needs bootstrap resamples for its intervals: --bootstrap must be >= 1, got {n_bootstrap}"
        )
    a, b = read_predictions(a_path), read_predictions(b_path)
    align(a, a_path, b, b_path, column_names(attributes))
    scored_a = score(a, a_path, attributes, age_bins, max_age)
    scored_b = score(b, b_path, attributes, age_bins, max_age)
    classes = scored_a.classes
    out: dict[str, Any] = {
        "labels": {"a": str(a_path), "b": str(b_path), **(labels or {})},
        "samples": len(a.rows),
        "bootstrap": {"resamples": n_bootstrap, "confidence": CONFIDENCE, "seed": seed},
        "attributes": {},
    }
    for attribute, groups in scored_a.groups.items():
        common = (scored_a.references, scored_a.datasets, groups, classes)
        result_a = compute_fairness(scored_a.predictions, *common)
        result_b = compute_fairness(scored_b.predictions, *common)
        draws = bootstrap_summaries(
            [scored_a.predictions, scored_b.predictions], *common, n_bootstrap=n_bootstrap, seed=seed
        )
        changes = {
            key: _change(result_a[key], result_b[key], [db["summary"][key] - da["summary"][key] for da, db in draws])
            for _, key in CHANGED_METRICS
        }
        per_group: dict[str, dict[str, Any]] = {}
        for dataset, by_group in result_a["per_group"].items():
            per_group[dataset] = {}
            for group, scores in by_group.items():
                paired = [
                    db["per_group"][dataset][group]["f1"] - da["per_group"][dataset][group]["f1"]
                    for da, db in draws
                    if group in da["per_group"][dataset]
                ]
                f1_b = result_b["per_group"][dataset][group]["f1"]
                per_group[dataset][group] = {
                    "n": scores["n"], "a": scores["f1"], "b": f1_b, "difference": f1_b - scores["f1"],
                    "ci": interval(paired),
                }  # fmt: skip
        out["attributes"][attribute] = {
            "changes": changes,
            "per_group": per_group,
            "verdict": verdict(attribute, changes),
            "n_unknown_group": result_a["n_unknown_group"],
        }
    return out


def render_markdown(comparison: Mapping[str, Any], plot: str | None = None) -> str:
    labels = comparison["labels"]
    boot = comparison["bootstrap"]
    lines = [
        "# Comparison: B against A",
        "",
        f"- **A:** `{labels['a']}`",
        f"- **B:** `{labels['b']}`",
        f"- **Rows:** {comparison['samples']}, the same in both; differences are B - A with paired "
        f"{boot['confidence']:.0%} bootstrap intervals ({boot['resamples']} resamples within each dataset)",
        "",
        "## Verdicts",
        "",
    ]
    lines += [f"- {c['verdict']}" for c in comparison["attributes"].values()]
    for attribute, c in comparison["attributes"].items():
        lines += ["", f"## {attribute}: change in the summary metrics", "", "| metric | A | B | B - A | 95% CI |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, key in CHANGED_METRICS:
            ch = c["changes"][key]
            ci = f"[{ch['ci'][0]:+.3f}, {ch['ci'][1]:+.3f}]" if ch["ci"] else "-"
            lines.append(f"| {name} | {ch['a']:.3f} | {ch['b']:.3f} | {ch['change']:+.3f} | {ci} |")
        lines += ["", f"### {attribute}: F1 per group", "", "| dataset | group | n | A | B | B - A | 95% CI |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for dataset, groups in c["per_group"].items():
            for group, v in groups.items():
                ci = f"[{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]" if v["ci"] else "-"
                lines.append(
                    f"| {dataset} | {group} | {v['n']} | {v['a']:.3f} | {v['b']:.3f} | {v['difference']:+.3f} | {ci} |"
                )
    if plot:
        lines += ["", f"![F1 difference per group]({plot})"]
    return "\n".join(lines) + "\n"


def check_comparison_folder(out_dir: str | Path, comparison: Mapping[str, Any], overwrite: bool = False) -> None:
    """Refuse to replace another comparison's report, or to write over an input, unless `overwrite`."""
    out = Path(out_dir)
    labels = comparison["labels"]
    targets = {(out / name).resolve() for name in COMPARE_FILES.values()}
    for side in ("a", "b"):
        if Path(labels[side]).resolve() in targets:
            raise ValueError(f"-o {out} would write over input {labels[side]}; choose another folder")
    if overwrite:
        return
    previous = out / COMPARE_FILES["json"]
    if previous.is_file():
        try:
            before = json.loads(previous.read_text(encoding="utf-8")).get("labels", {})
        except (ValueError, AttributeError):
            before = {}
        if all(before.get(side) == labels[side] for side in ("a", "b")):
            return  # the same comparison, again
        raise ValueError(
            f"{previous} is the report of another comparison ({before.get('a')} against {before.get('b')}): pass "
            "--overwrite to replace it, or another -o folder"
        )
    existing = [out / name for name in COMPARE_FILES.values() if (out / name).exists()]
    if existing:
        raise ValueError(
            f"{existing[0]} exists without {COMPARE_FILES['json']}: pass --overwrite, or another -o folder"
        )


def write_comparison(
    out_dir: str | Path, comparison: Mapping[str, Any], plots: bool = True, overwrite: bool = True
) -> dict[str, Path]:
    """compare.json, compare.md and the plot in `out_dir` (see `check_comparison_folder` for `overwrite`)."""
    check_comparison_folder(out_dir, comparison, overwrite)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    from fair_trl.audit.plots import NO_MATPLOTLIB, plot_group_differences, plotting_available

    if plots and not plotting_available():
        logger.warning(NO_MATPLOTLIB)
    elif plots:
        drawn = plot_group_differences(comparison, out / COMPARE_FILES["plot"])
        if drawn is not None:
            written["plot"] = drawn
    (out / COMPARE_FILES["json"]).write_text(json.dumps(comparison, indent=2, default=str) + "\n", encoding="utf-8")
    plot = written["plot"].name if "plot" in written else None
    (out / COMPARE_FILES["markdown"]).write_text(render_markdown(comparison, plot), encoding="utf-8")
    written.update({"json": out / COMPARE_FILES["json"], "markdown": out / COMPARE_FILES["markdown"]})
    return written
