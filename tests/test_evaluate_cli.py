"""`fair-trl evaluate PRED.jsonl` as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fair_trl.cli import main
from fair_trl.metrics import compute_fairness

LINES = [
    {"prediction": r"<think>mole</think> \boxed{Nevus}", "reference": "NV", "dataset": "ham10000", "age": 45,
     "sex": "F"},
    {"prediction": r"\boxed{MEL}", "reference": "NV", "dataset": "ham10000", "age": 80, "sex": "male"},
    {"prediction": r"\boxed{BCC}", "reference": "BCC", "dataset": "ham10000", "age": "", "sex": "Male"},
    {"prediction": "<answer>Benign</answer>", "reference": "Benign", "dataset": "isic2020", "age": 30, "sex": "F"},
    {"prediction": "not sure", "reference": "Malignant", "dataset": "isic2020", "age": "070Y", "sex": "unknown"},
    {"prediction": ["Edema", "Pleural Effusion"], "reference": "Edema, Pleural Effusion", "dataset": "chexpert",
     "age": 66, "sex": "M"},
    {"prediction": r"\boxed{No Finding}", "reference": ["Edema"], "dataset": "chexpert", "age": 20, "sex": "F"},
]  # fmt: skip


def write(path: Path, lines) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_evaluate_prints_both_tables_and_writes_json_and_markdown(tmp_path, capsys):
    pred = write(tmp_path / "pred.jsonl", LINES)
    out_json, out_md = tmp_path / "fair.json", tmp_path / "fair.md"
    assert main(["evaluate", str(pred), "--json", str(out_json), "--markdown", str(out_md)]) == 0
    printed = capsys.readouterr().out
    assert "Summary (Table 2 style)" in printed
    assert "Per dataset and age group" in printed and "Per dataset and sex group" in printed
    for column in ("PP", "EOD", "FPR_diff", "sigma_F1", "delta_F1", "Acc_ES", "F1_ES", "TPR", "FDR", "delta_FPR"):
        assert column in printed
    assert "7 samples; 1 predictions name no valid label." in printed
    assert "age: 1 samples with unknown age" in printed

    report = json.loads(out_json.read_text())
    # The sex attribute as compute_fairness sees it: free text parsed, synonyms mapped, sex normalised.
    classes = {
        "ham10000": ["MEL", "NV", "BCC", "AKIEC", "OTHER"],
        "isic2020": ["Malignant", "Benign"],
        "chexpert": report["attributes"]["sex"]["classes"]["chexpert"],
    }
    expected = compute_fairness(
        [{"NV"}, {"MEL"}, {"BCC"}, {"Benign"}, set(), {"Edema", "Pleural Effusion"}, {"No Finding"}],
        ["NV", "NV", "BCC", "Benign", "Malignant", "Edema, Pleural Effusion", "Edema"],
        [line["dataset"] for line in LINES],
        ["F", "M", "M", "F", None, "M", "F"],
        classes,
    )
    assert len(classes["chexpert"]) == 14
    assert report["attributes"]["sex"]["f1"] == pytest.approx(expected["f1"])
    assert report["attributes"]["sex"]["EOD"] == pytest.approx(expected["EOD"])
    assert report["attributes"]["sex"]["per_group"]["ham10000"]["M"]["n"] == 2
    assert set(report["attributes"]["age"]["per_group"]["ham10000"]) == {"a2", "a4"}
    # "070Y" is a DICOM age: a3.
    assert "a3" in report["attributes"]["age"]["per_group"]["isic2020"]

    markdown = out_md.read_text()
    assert "| attribute | PP | EOD |" in markdown
    assert f"| sex | {report['attributes']['sex']['PP']:.3f} |" in markdown


def test_malformed_line_stops_with_its_number_or_is_skipped_and_counted(tmp_path, capsys):
    pred = write(
        tmp_path / "pred.jsonl", [LINES[0], "{not json", LINES[1], {"prediction": "NV", "dataset": "ham10000"}]
    )
    assert main(["evaluate", str(pred)]) == 2
    assert "line 2" in capsys.readouterr().err

    out_json = tmp_path / "out.json"
    assert main(["evaluate", str(pred), "--skip-invalid", "--json", str(out_json)]) == 0
    assert "2 malformed line(s) skipped." in capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert [s["line"] for s in report["skipped_lines"]] == [2, 4]
    assert "missing field(s) ['reference']" in report["skipped_lines"][1]["error"]
    assert report["samples"] == 2


def test_reference_outside_the_label_set_names_the_line(tmp_path, capsys):
    pred = write(tmp_path / "pred.jsonl", [LINES[0], {**LINES[1], "reference": "Banana"}])
    assert main(["evaluate", str(pred)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "'Banana'" in err and "ham10000" in err


def test_attributes_option_and_bootstrap(tmp_path, capsys):
    lines = [{**line, "site": "A" if i % 2 else "B"} for i, line in enumerate(LINES)]
    pred = write(tmp_path / "pred.jsonl", lines)
    out_json = tmp_path / "out.json"
    assert main(["evaluate", str(pred), "--attributes", "site", "--bootstrap", "50", "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert list(report["attributes"]) == ["site"]
    low, high = report["attributes"]["site"]["ci"]["f1"]
    assert low <= report["attributes"]["site"]["f1"] <= high


def test_console_script_runs(tmp_path):
    pred = write(tmp_path / "pred.jsonl", LINES)
    script = Path(sys.executable).parent / "fair-trl"
    done = subprocess.run([str(script), "evaluate", str(pred)], capture_output=True, text=True, check=True)
    assert "Summary (Table 2 style)" in done.stdout
    missing = subprocess.run([str(script), "evaluate", str(tmp_path / "nope.jsonl")], capture_output=True, text=True)
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr


def test_age_bins_audit_a_run_trained_with_custom_bins(tmp_path, capsys):
    pred = write(tmp_path / "pred.jsonl", LINES)
    out_json = tmp_path / "fair.json"
    assert main(["evaluate", str(pred), "--age-bins", "40", "65", "--json", str(out_json)]) == 0
    age = json.loads(out_json.read_text())["attributes"]["age"]
    # Ages 45, 80, 30, 70 (070Y), 66, 20 with bounds 40 and 65: a1 = 30, 20; a2 = 45; a3 = 80, 70, 66.
    assert {g: v["n"] for g, v in age["group_values"].items()} == {"a1": 2, "a2": 1, "a3": 3}
    assert main(["evaluate", str(pred), "--json", str(out_json)]) == 0
    default = json.loads(out_json.read_text())["attributes"]["age"]
    assert {g: v["n"] for g, v in default["group_values"].items()} == {"a1": 1, "a2": 2, "a3": 2, "a4": 1}
    capsys.readouterr()
    assert main(["evaluate", str(pred), "--age-bins", "65", "40"]) == 2
    assert "not greater than the previous bound" in capsys.readouterr().err


# -- bad input, as a skeptical user gives it (issue 26) ------------------------------------------------------


def test_the_report_never_replaces_the_predictions_file(tmp_path, capsys):
    pred = write(tmp_path / "pred.jsonl", LINES)
    before = pred.read_bytes()
    assert main(["evaluate", str(pred), "--json", str(pred)]) == 2
    assert "--json" in capsys.readouterr().err
    assert main(["evaluate", str(pred), "--markdown", str(tmp_path / "." / "pred.jsonl")]) == 2
    assert pred.read_bytes() == before
    assert main(["evaluate", str(pred), "--json", str(tmp_path / "r"), "--markdown", str(tmp_path / "r")]) == 2
    assert "--markdown" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_reports_into_a_missing_folder_are_written_there(tmp_path):
    pred = write(tmp_path / "pred.jsonl", LINES)
    out = tmp_path / "new" / "folder"
    assert main(["evaluate", str(pred), "--json", str(out / "f.json"), "--markdown", str(out / "f.md")]) == 0
    assert json.loads((out / "f.json").read_text())["samples"] == len(LINES)
    assert "Summary" in (out / "f.md").read_text()


def test_a_reference_listing_numbers_is_named_and_skippable(tmp_path, capsys):
    pred = write(tmp_path / "pred.jsonl", [*LINES, {**LINES[0], "reference": [1, 2]}])
    assert main(["evaluate", str(pred)]) == 2
    err = capsys.readouterr().err
    assert f"line {len(LINES) + 1}: 'reference' must list labels as strings, got 1 (int)" in err
    assert main(["evaluate", str(pred), "--skip-invalid"]) == 0
    assert "1 malformed line(s) skipped." in capsys.readouterr().out


def test_non_utf8_input_names_the_file_and_line(tmp_path, capsys):
    pred = write(tmp_path / "pred.jsonl", LINES)
    pred.write_bytes(pred.read_bytes() + b'{"prediction": "NV", "reference": "NV", "dataset": "ham\xff"}\n')
    assert main(["evaluate", str(pred)]) == 2
    assert f"{pred}, line {len(LINES) + 1}: not UTF-8 text (byte 0xff" in capsys.readouterr().err
    assert main(["evaluate", str(pred), "--skip-invalid"]) == 0


def test_without_attribute_fields_correct_answers_score_one_not_zero(tmp_path, capsys):
    lines = [{k: v for k, v in line.items() if k not in ("age", "sex")} for line in LINES]
    lines = [{**line, "prediction": line["reference"]} for line in lines]  # every answer right
    pred = write(tmp_path / "pred.jsonl", lines)
    out = tmp_path / "f.json"
    assert main(["evaluate", str(pred), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "age, sex: no line has a valid value" in printed and "all samples as one group" in printed
    report = json.loads(out.read_text())
    assert report["absent_attributes"] == ["age", "sex"]
    (overall,) = report["attributes"].values()
    assert overall["acc"] == 1.0 and overall["f1"] > 0.5  # it printed 0.000 for both when no group was valid
    # One attribute present: it is scored, the absent one named.
    lines = [{**line, "sex": "F"} for line in lines]
    assert main(["evaluate", str(write(pred, lines)), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["attributes"]) == ["sex"] and report["absent_attributes"] == ["age"]
    assert report["attributes"]["sex"]["acc"] == 1.0


def test_evaluate_reads_declared_column_kinds(tmp_path, capsys):
    lines = [
        {"prediction": r"\boxed{NV}", "reference": "NV", "dataset": "ham10000", "PatientAge": "034Y",
         "PatientSex": "F"},
        {"prediction": r"\boxed{MEL}", "reference": "NV", "dataset": "ham10000", "PatientAge": 35,
         "PatientSex": "M"},
        {"prediction": r"\boxed{NV}", "reference": "NV", "dataset": "ham10000", "PatientAge": "071Y",
         "PatientSex": "male"},
    ]  # fmt: skip
    pred = write(tmp_path / "pred.jsonl", lines)
    out = tmp_path / "fair.json"
    assert main(["evaluate", str(pred), "--attributes", "PatientAge:age", "PatientSex:sex", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["attributes"]
    # "034Y" and 35 are one age bin (by name alone they would be two categories); "male" is M.
    assert set(results) == {"PatientAge", "PatientSex"}
    assert set(results["PatientAge"]["per_group"]["ham10000"]) == {"a2", "a3"}
    assert results["PatientAge"]["per_group"]["ham10000"]["a2"]["n"] == 2
    assert set(results["PatientSex"]["per_group"]["ham10000"]) == {"F", "M"}
    assert main(["evaluate", str(pred), "--attributes", "PatientAge:years"]) == 2
    assert "unknown kind 'years'" in capsys.readouterr().err


def test_declared_label_sets_score_labels_outside_them_as_naming_none(tmp_path):
    from fair_trl.evaluate import read_predictions, score_predictions

    lines = [
        {"prediction": r"\boxed{Normal, TB}", "reference": "Normal", "dataset": "cxr", "age": 40, "sex": "F"},
        {"prediction": r"\boxed{Normal}", "reference": "Normal", "dataset": "cxr", "age": 40, "sex": "F"},
    ]
    pred = write(tmp_path / "pred.jsonl", lines)
    data = read_predictions(pred)
    # Classes from the references alone: "TB" is dropped and the first answer reads as "Normal".
    assert score_predictions(data, pred).predictions[0] == frozenset({"Normal"})
    scored = score_predictions(data, pred, label_sets={"cxr": ["Normal", "Pneumonia"]})
    assert scored.classes["cxr"] == ("Normal", "Pneumonia")
    assert scored.predictions == [frozenset(), frozenset({"Normal"})]
