"""`fair-trl compare A B`: two models' answers to the same rows, with paired bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fair_trl.audit.compare import COMPARE_FILES, compare_files
from fair_trl.cli import main
from fair_trl.data import build_dataset
from fair_trl.groups import GroupKeyer
from fair_trl.metrics import bootstrap_summaries, compute_fairness

ROWS = 1500  # synthetic rows, both splits: about 300 test rows
DISADVANTAGED = {"a1", "a4"}


@pytest.fixture(scope="module")
def test_rows():
    return build_dataset("synthetic", None, num_rows=ROWS, seed=0)["test"].remove_columns(["image", "prompt"])


def write(path, rows, answer):
    """A predictions file: `answer(row, age group)` for each row, as `fair-trl audit` writes them."""
    keyer = GroupKeyer(["age"])
    lines = []
    for i, row in enumerate(rows):
        group = keyer.attribute("age", row["age"])
        lines.append({"id": str(i), "dataset": row["dataset"], "reference": row["solution"], "age": row["age"],
                      "sex": row["sex"], "prediction": answer(row, group)})  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def right(row, group):
    return f"\\boxed{{{row['solution']}}}"


def wrong_for_disadvantaged(row, group):
    return "\\boxed{}" if group in DISADVANTAGED else right(row, group)


def test_a_model_that_fixes_the_disadvantaged_groups_is_fairer_with_intervals_excluding_zero(test_rows, tmp_path):
    a = write(tmp_path / "a" / "predictions.jsonl", test_rows, wrong_for_disadvantaged)
    b = write(tmp_path / "b" / "predictions.jsonl", test_rows, right)
    comparison = compare_files(a, b, ["age", "sex"], n_bootstrap=200, seed=0)
    age = comparison["attributes"]["age"]
    for dataset, groups in age["per_group"].items():
        for group, cell in groups.items():
            if group in DISADVANTAGED:
                # B is right where A named nothing: F1 rises by B's F1, and the paired interval excludes 0
                # unless the group is too small for F1 to be above 0 (a class it lacks scores 0).
                assert cell["difference"] == pytest.approx(cell["b"])
                if cell["b"] > 0 and cell["n"] >= 5:
                    assert cell["ci"][0] > 0, (dataset, group, cell)
            else:
                assert cell["difference"] == 0 and tuple(cell["ci"]) == (0, 0)
    changes = age["changes"]
    assert changes["delta_f1"]["change"] < 0 and changes["delta_f1"]["ci"][1] < 0
    assert changes["f1"]["change"] > 0 and changes["f1"]["ci"][0] > 0
    assert changes["EOD"]["change"] < 0
    assert age["verdict"].startswith("age: B is fairer than A: ΔF1") and "F1 rose" in age["verdict"]


def test_the_same_model_twice_shows_no_change(test_rows, tmp_path):
    a = write(tmp_path / "a.jsonl", test_rows, wrong_for_disadvantaged)
    comparison = compare_files(a, a, ["age"], n_bootstrap=50)
    age = comparison["attributes"]["age"]
    assert all(tuple(c["ci"]) == (0, 0) for g in age["per_group"].values() for c in g.values())
    assert age["verdict"].startswith("age: no detectable change in fairness")


def test_paired_draws_are_the_same_rows_for_both_models(test_rows, tmp_path):
    """With one prediction set, `bootstrap_summaries` is exactly `compute_fairness`'s resampling."""
    from fair_trl.evaluate import read_predictions, score_predictions

    path = write(tmp_path / "a.jsonl", test_rows, wrong_for_disadvantaged)
    s = score_predictions(read_predictions(path), path, ["age"])
    args = (s.references, s.datasets, s.groups["age"], s.classes)
    single = compute_fairness(s.predictions, *args, n_bootstrap=30, seed=5)
    draws = bootstrap_summaries([s.predictions, s.predictions], *args, n_bootstrap=30, seed=5)
    import numpy as np

    f1 = [d[0]["summary"]["f1"] for d in draws]
    assert tuple(np.percentile(f1, [2.5, 97.5])) == pytest.approx(single["ci"]["f1"])
    assert all(d[0]["summary"] == d[1]["summary"] for d in draws)


def test_compare_cli_writes_report_json_and_plot(test_rows, tmp_path, capsys):
    a = write(tmp_path / "a" / "predictions.jsonl", test_rows, wrong_for_disadvantaged)
    b = write(tmp_path / "b" / "predictions.jsonl", test_rows, right)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "-o", str(out), "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert "age: B is fairer than A" in printed and printed.count("ΔF1") == 2  # one verdict per attribute
    for name in COMPARE_FILES.values():
        assert (out / name).stat().st_size > 0, name
    markdown = (out / COMPARE_FILES["markdown"]).read_text()
    assert "## Verdicts" in markdown and "| delta_F1 |" in markdown and "](group_f1_difference.png)" in markdown


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda lines: lines[:-1], "is not in"),
        (lambda lines: [*lines, {**lines[0], "id": "extra"}], "row id 'extra'"),
        (lambda lines: [{**line, "reference": "Benign"} if line["id"] == "7" else line for line in lines],
         "row id '7' differs in 'reference'"),
        (lambda lines: [{**line, "age": 99} if line["id"] == "3" else line for line in lines],
         "row id '3' differs in 'age'"),
    ],
)  # fmt: skip
def test_files_that_do_not_answer_the_same_rows_are_refused_naming_the_first_mismatch(
    test_rows, tmp_path, capsys, change, message
):
    a = write(tmp_path / "a.jsonl", test_rows, right)
    lines = [json.loads(line) for line in a.read_text().splitlines()]
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps(line) + "\n" for line in change(lines)))
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "cmp"), "--bootstrap", "10"]) == 2
    err = capsys.readouterr().err
    assert message in err and "fair-trl compare:" in err
    assert not (tmp_path / "cmp" / COMPARE_FILES["json"]).exists()


def test_rows_in_another_order_are_matched_by_id(test_rows, tmp_path):
    a = write(tmp_path / "a.jsonl", test_rows, wrong_for_disadvantaged)
    b = write(tmp_path / "b.jsonl", test_rows, right)
    lines = b.read_text().splitlines(keepends=True)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(reversed(lines)))
    ordered = compare_files(a, b, ["age"], n_bootstrap=30)
    reordered = compare_files(a, shuffled, ["age"], n_bootstrap=30)
    assert ordered["attributes"]["age"]["changes"] == reordered["attributes"]["age"]["changes"]


def test_a_folder_holding_another_comparison_is_not_written_without_overwrite(test_rows, tmp_path, capsys):
    a = write(tmp_path / "a" / "predictions.jsonl", test_rows, wrong_for_disadvantaged)
    b = write(tmp_path / "b" / "predictions.jsonl", test_rows, right)
    c = write(tmp_path / "c" / "predictions.jsonl", test_rows, right)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "-o", str(out), "--bootstrap", "20", "--no-plots"]) == 0
    first = (out / COMPARE_FILES["json"]).read_bytes()
    assert main(["compare", str(a), str(c), "-o", str(out), "--bootstrap", "20", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "is the report of another comparison" in err and "--overwrite" in err
    assert (out / COMPARE_FILES["json"]).read_bytes() == first
    assert main(["compare", str(a), str(b), "-o", str(out), "--bootstrap", "20", "--no-plots"]) == 0  # the same one
    assert main(["compare", str(a), str(c), "-o", str(out), "--bootstrap", "20", "--no-plots", "--overwrite"]) == 0
    assert json.loads((out / COMPARE_FILES["json"]).read_text())["labels"]["b"] == str(c)
