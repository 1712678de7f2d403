"""`fair-trl audit`: answers a split with a model, resumably, and reports its fairness as `evaluate` does.

The tiny Gemma 3 VLM answers the synthetic benchmark through the real CLI; a scripted backend (answers
chosen per row) stands in where a test needs a model that is right for some groups and wrong for others.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from fair_trl.audit.backends import GenerationSettings, HFBackend, PromptInput, load_processor, render_prompts
from fair_trl.audit.inputs import load_rows
from fair_trl.audit.report import FAIRNESS_FILE, NO_VALID_LABEL, PLOT_FILES, REPORT_FILE, audit_report
from fair_trl.audit.run import MANIFEST_FILE, AuditSettings, audit
from fair_trl.audit.store import PREDICTIONS_FILE, PredictionStore
from fair_trl.cli import main
from fair_trl.data import build_dataset
from fair_trl.evaluate import evaluate_file
from fair_trl.metrics import compute_fairness
from fair_trl.models import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
ROWS = 150  # synthetic rows, both splits: about 30 test rows
DISADVANTAGED = {"a1", "a4"}


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "vlm", kind="vlm"))


def audit_args(model, out, *extra):
    return ["audit", "--model", str(model), "--dataset", "synthetic", "-O", f"num_rows={ROWS}", "-o", str(out),
            "--max-new-tokens", "8", "--batch-size", "4", "--bootstrap", "50", "--no-progress", *extra]  # fmt: skip


def read_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_audit_answers_every_test_row_and_reports_what_evaluate_reports(vlm_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(audit_args(vlm_dir, out)) == 0
    printed = capsys.readouterr().out
    test_split = build_dataset("synthetic", None, num_rows=ROWS)["test"]

    lines = read_lines(out / PREDICTIONS_FILE)
    assert [line["id"] for line in lines] == [str(i) for i in range(len(test_split))]
    for line, row in zip(lines, test_split, strict=True):
        assert (line["reference"], line["dataset"], line["age"], line["sex"]) == (
            row["solution"], row["dataset"], row["age"], row["sex"]
        )  # fmt: skip
        assert isinstance(line["prediction"], str)
    for name in (FAIRNESS_FILE, REPORT_FILE, MANIFEST_FILE, *PLOT_FILES.values()):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name

    saved = json.loads((out / FAIRNESS_FILE).read_text())
    evaluated = evaluate_file(out / PREDICTIONS_FILE)  # `fair-trl evaluate` reads the audit's file as is
    for attribute in ("age", "sex"):
        for key in ("f1", "acc", "EOD", "PP", "delta_f1", "sigma_acc"):
            assert saved["attributes"][attribute][key] == pytest.approx(evaluated["attributes"][attribute][key])
        assert set(saved["attributes"][attribute]["ci"]) >= {"f1", "EOD", "PP", "delta_f1"}
    assert saved["samples"] == len(test_split)
    assert saved["audit"]["answered"] == len(test_split) and saved["audit"]["resumed"] == 0
    report = (out / REPORT_FILE).read_text()
    assert "### Per dataset and age group" in report and "](group_f1.png)" in report
    assert f"{len(test_split)} rows scored" in printed and "| age |" in printed


def test_bootstrap_intervals_are_compute_fairnesss_own(tmp_path):
    path = scripted_predictions(tmp_path / "p.jsonl", wrong_for=DISADVANTAGED, rows=600)
    report = audit_report(path, ["age"], n_bootstrap=40, seed=3)
    evaluated = evaluate_file(path, ["age"], n_bootstrap=40, seed=3)
    for key, interval in evaluated["attributes"]["age"]["ci"].items():
        assert report["attributes"]["age"]["ci"][key] == pytest.approx(interval), key


class ScriptedBackend:
    """Answers each prompt with what `answer(prompt_text)` says, in the \\boxed{} format."""

    name = "scripted"

    def __init__(self, processor, answers):
        self.processor, self.answers, self.calls = processor, answers, []

    def generate(self, prompts):
        self.calls.append(len(prompts))
        return [self.answers.pop(0) for _ in prompts]


def scripted_predictions(path, wrong_for, rows=600, seed=0, wrong=None):
    """A predictions file on the synthetic test split: right answers, except for `wrong_for` age groups."""
    from fair_trl.groups import GroupKeyer

    keyer = GroupKeyer(["age"])
    data = build_dataset("synthetic", None, num_rows=rows, seed=seed)["test"]
    lines = []
    for i, row in enumerate(data.remove_columns(["image", "prompt"])):
        group = keyer.attribute("age", row["age"])
        answer = (wrong or (lambda r: "no idea"))(row) if group in wrong_for else f"\\boxed{{{row['solution']}}}"
        lines.append({"id": str(i), "dataset": row["dataset"], "reference": row["solution"], "age": row["age"],
                      "sex": row["sex"], "prediction": answer})  # fmt: skip
    Path(path).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_model_wrong_for_some_groups_is_seen_per_group_with_its_worst_group_confusion(vlm_dir, tmp_path):
    rows = load_rows("synthetic", "test", options={"num_rows": 600})
    from fair_trl.groups import GroupKeyer

    keyer = GroupKeyer(["age"])
    answers = []
    for row in rows.dataset.remove_columns(["image", "prompt"]):
        # Disadvantaged patients get an empty answer, everyone else the right label.
        answers.append("" if keyer.attribute("age", row["age"]) in DISADVANTAGED else f"\\boxed{{{row['solution']}}}")
    processor = load_processor(vlm_dir)
    backend = ScriptedBackend(processor, list(answers))
    settings = AuditSettings(
        model=vlm_dir,
        dataset="synthetic",
        dataset_options={"num_rows": 600},
        output_dir=str(tmp_path / "out"),
        batch_size=16,
        bootstrap=100,
        progress=False,
    )
    report, written = audit(settings, rows=rows, backend=backend)

    assert backend.calls[:-1] == [16] * (len(backend.calls) - 1)  # batches of --batch-size
    age = report["attributes"]["age"]
    assert report["empty_generations"] == answers.count("") > 0
    assert report["no_valid_label"] == answers.count("")
    for dataset, groups in age["per_group"].items():
        for group, scores in groups.items():
            ci = report["group_f1_ci"]["age"][dataset][group]
            if group in DISADVANTAGED:
                assert scores["f1"] == 0.0 and tuple(ci) == (0.0, 0.0)
            else:
                assert scores["acc"] == 1.0
    assert age["delta_f1"] > 0.3 and age["ci"]["delta_f1"][0] > 0
    worst = report["worst_group"]["age"]
    assert worst["group"] in DISADVANTAGED and worst["f1"] == 0.0
    confusion = worst["confusion"]
    # Every reference label of the worst group went to "no valid label", and nowhere else.
    assert confusion["predicted"][-1] == NO_VALID_LABEL
    assert all(row[:-1] == [0] * (len(row) - 1) for row in confusion["counts"])
    assert sum(row[-1] for row in confusion["counts"]) >= worst["n"]
    assert set(written) >= {"group_f1", "heatmap", "confusion", "fairness", "report"}
    assert "empty generations" in written["report"].read_text()


def test_a_partial_last_line_is_dropped_and_that_row_answered_once(vlm_dir, tmp_path):
    out = tmp_path / "audit"
    assert main(audit_args(vlm_dir, out, "--limit", "8")) == 0
    path = out / PREDICTIONS_FILE
    full = read_lines(path)
    # As if killed inside the write of rows 6-7: row 6's line is half there.
    text = path.read_text().splitlines(keepends=True)
    path.write_text("".join(text[:6]) + text[6][: len(text[6]) // 2])
    store = PredictionStore(path)
    assert store.dropped_partial_line and store.done == {str(i) for i in range(6)}
    assert main(audit_args(vlm_dir, out, "--limit", "8")) == 0
    assert read_lines(path) == full


def test_a_rerun_with_other_settings_is_refused_naming_them(vlm_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(audit_args(vlm_dir, out, "--limit", "4")) == 0
    assert main(audit_args(vlm_dir, out, "--limit", "4", "--max-new-tokens", "3")) == 2
    assert "max_new_tokens: 8 then, 3 now" in capsys.readouterr().err
    assert main(audit_args(vlm_dir, out, "--limit", "4", "--max-new-tokens", "3", "--overwrite")) == 0
    assert len(read_lines(out / PREDICTIONS_FILE)) == 4


def test_resume_after_sigkill_loses_at_most_the_batch_in_flight(vlm_dir, tmp_path):
    """A real SIGKILL of `fair-trl audit` mid-run; the rerun completes the file with every row once."""
    batch = 4
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = audit_args(vlm_dir, killed, "--max-new-tokens", "48", "--batch-size", str(batch))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fair_trl.cli", *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    path = killed / PREDICTIONS_FILE
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if path.is_file() and path.read_text().count("\n") >= 2 * batch:
            break
        time.sleep(0.05)
    assert process.poll() is None, (
        "the audit finished (or failed) before it could be killed: " + process.stderr.read().decode()[-2000:]
    )
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()

    raw = path.read_bytes()
    total = len(build_dataset("synthetic", None, num_rows=ROWS)["test"])
    lines = raw.decode().splitlines()
    assert raw.endswith(b"\n") and all(json.loads(line)["id"] for line in lines)  # whole lines only
    assert len(lines) % batch == 0 and 2 * batch <= len(lines) < total  # whole batches: only the one in flight lost

    assert main(args) == 0
    resumed = read_lines(path)
    assert [r["id"] for r in resumed] == [str(i) for i in range(total)]  # every row, once, in order
    saved = json.loads((killed / FAIRNESS_FILE).read_text())["audit"]
    assert saved["resumed"] == len(lines) and saved["answered"] == total - len(lines)
    # Greedy answers do not depend on the interruption: an unbroken audit gives the same file.
    assert main(audit_args(vlm_dir, whole, "--max-new-tokens", "48", "--batch-size", str(batch))) == 0
    assert resumed == read_lines(whole / PREDICTIONS_FILE)


def strip_chat_template(model_dir, target):
    import shutil

    shutil.copytree(model_dir, target)
    for path in Path(target).glob("*.jinja"):
        path.unlink()
    for name in ("tokenizer_config.json", "processor_config.json", "chat_template.json"):
        config = Path(target) / name
        if config.is_file():
            values = json.loads(config.read_text())
            values.pop("chat_template", None)
            config.write_text(json.dumps(values))
    return target


def test_a_processor_without_chat_template_is_refused_and_one_can_be_given(vlm_dir, tmp_path, capsys):
    bare = strip_chat_template(vlm_dir, tmp_path / "bare")
    assert load_processor(str(bare)).chat_template is None
    assert main(audit_args(bare, tmp_path / "out", "--limit", "2")) == 2
    err = capsys.readouterr().err
    assert "has no chat template" in err and "--chat-template" in err
    template = tmp_path / "template.jinja"
    template.write_text(load_processor(vlm_dir).chat_template)
    assert main(audit_args(bare, tmp_path / "out", "--limit", "2", "--chat-template", str(template))) == 0


def test_render_prompts_gives_the_image_its_tokens_and_hf_generate_answers(vlm_dir):
    processor = load_processor(vlm_dir)
    rows = load_rows("synthetic", "test", options={"num_rows": ROWS})
    row = rows.dataset[0]
    (text,) = render_prompts(processor, [row["prompt"]])
    assert text.startswith(processor.tokenizer.bos_token) and "<start_of_image>" in text
    backend = HFBackend.from_pretrained(vlm_dir, processor, GenerationSettings(max_new_tokens=5), device="cpu")
    first = backend.generate([PromptInput(text, rows.images(row))])
    again = backend.generate([PromptInput(text, rows.images(row))])
    assert first == again and isinstance(first[0], str)  # greedy


def saved_split(tmp_path, transform):
    data = build_dataset("synthetic", None, num_rows=ROWS)
    data = transform(data)
    data.save_to_disk(str(tmp_path / "built"))
    return tmp_path / "built"


def test_rows_whose_image_does_not_decode_are_counted_reported_and_not_answered(vlm_dir, tmp_path):
    from datasets import Image

    def corrupt(data):
        test = data["test"].cast_column("image", Image(decode=False))
        broken = {1, 4}
        test = test.map(lambda row, i: {"image": {"bytes": b"not an image", "path": None} if i in broken else
                        row["image"]}, with_indices=True)  # fmt: skip
        data["test"] = test.cast_column("image", Image())
        return data

    built = saved_split(tmp_path, corrupt)
    out = tmp_path / "out"
    args = ["audit", "--model", vlm_dir, "--dataset", str(built), "-o", str(out), "--max-new-tokens", "4",
            "--batch-size", "4", "--bootstrap", "20", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    ids = [line["id"] for line in read_lines(out / PREDICTIONS_FILE)]
    total = len(load_from_disk(str(built))["test"])
    assert "1" not in ids and "4" not in ids and len(ids) == total - 2
    saved = json.loads((out / FAIRNESS_FILE).read_text())
    assert [row_id for row_id, _ in saved["audit"]["image_errors"]] == ["1", "4"]
    report = (out / REPORT_FILE).read_text()
    assert "2 not answered because their image did not decode" in report and "row `4`:" in report


@pytest.mark.parametrize("column", ["solution", "sex"])
def test_a_dataset_missing_a_needed_column_is_refused_naming_it(vlm_dir, tmp_path, capsys, column):
    built = saved_split(tmp_path, lambda data: data.remove_columns([column]))
    assert main(["audit", "--model", vlm_dir, "--dataset", str(built), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"has no column(s) ['{column}']" in err and "Its columns are" in err
    assert not (tmp_path / "out" / PREDICTIONS_FILE).exists()


def test_compute_fairness_of_the_scripted_file_matches_the_audit_point_estimates(tmp_path):
    path = scripted_predictions(tmp_path / "p.jsonl", wrong_for={"a4"}, rows=300)
    report = audit_report(path, ["age"], n_bootstrap=0)
    assert "ci" not in report["attributes"]["age"]
    lines = read_lines(path)
    from fair_trl.evaluate import read_predictions, score_predictions

    scored = score_predictions(read_predictions(path), path, ["age"])
    direct = compute_fairness(scored.predictions, scored.references, scored.datasets, scored.groups["age"],
                              scored.classes)  # fmt: skip
    assert report["attributes"]["age"]["f1"] == direct["f1"] and report["samples"] == len(lines)


def test_without_matplotlib_the_report_is_written_with_its_tables_only(tmp_path, monkeypatch):
    import fair_trl.audit.plots

    monkeypatch.setattr(fair_trl.audit.plots, "plotting_available", lambda: False)
    path = scripted_predictions(tmp_path / "p.jsonl", wrong_for=DISADVANTAGED, rows=300)
    from fair_trl.audit.report import write_report

    written = write_report(tmp_path / "out", audit_report(path, ["age"], n_bootstrap=10))
    assert set(written) == {"fairness", "report"}
    assert "matplotlib is not installed" in written["report"].read_text()
    assert not list((tmp_path / "out").glob("*.png"))


# -- nothing lost, nothing mixed (issue 26) ------------------------------------------------------------------


def snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def test_overwrite_with_a_mistyped_model_deletes_nothing(vlm_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(audit_args(vlm_dir, out, "--limit", "4", "--no-plots")) == 0
    before = snapshot(out)
    assert {PREDICTIONS_FILE, REPORT_FILE, MANIFEST_FILE} <= before.keys()
    assert main(audit_args(tmp_path / "no-such-model", out, "--limit", "4", "--overwrite")) == 2
    assert snapshot(out) == before  # answers, report and manifest untouched
    assert "no such folder" in capsys.readouterr().err  # not a Hub repository-id message
    # A dataset that fails to load is a failed check too.
    assert main(audit_args(vlm_dir, out, "--limit", "4", "--overwrite", "-O", "badkey=1")) == 2
    err = capsys.readouterr().err
    assert "badkey" in err and "num_rows" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_overwrite_clears_the_earlier_report_too(vlm_dir, tmp_path):
    out = tmp_path / "audit"
    assert main(audit_args(vlm_dir, out, "--limit", "4", "--no-plots")) == 0
    (out / PLOT_FILES["heatmap"]).write_text("an earlier run's plot")
    assert main(audit_args(vlm_dir, out, "--limit", "2", "--no-plots", "--overwrite")) == 0
    assert not (out / PLOT_FILES["heatmap"]).exists()
    assert len(read_lines(out / PREDICTIONS_FILE)) == 2


def test_an_output_folder_that_is_an_input_is_refused(vlm_dir, tmp_path, capsys):
    before = snapshot(vlm_dir)
    assert main(audit_args(vlm_dir, vlm_dir, "--limit", "2", "--overwrite")) == 2
    assert "is also --model" in capsys.readouterr().err
    assert snapshot(vlm_dir) == before


def test_a_folder_holding_another_runs_report_is_not_written_without_overwrite(vlm_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    out.mkdir()
    (out / REPORT_FILE).write_text("someone else's report")
    assert main(audit_args(vlm_dir, out, "--limit", "2")) == 2
    assert f"{REPORT_FILE} exists without {MANIFEST_FILE}" in capsys.readouterr().err
    assert (out / REPORT_FILE).read_text() == "someone else's report"


def test_resume_after_the_data_was_rebuilt_is_refused_naming_it(vlm_dir, tmp_path, capsys):
    built = tmp_path / "built"
    build_dataset("synthetic", None, num_rows=ROWS, seed=0).save_to_disk(str(built))
    args = ["audit", "--model", vlm_dir, "--dataset", str(built), "-o", str(tmp_path / "out"), "--limit", "4",
            "--max-new-tokens", "4", "--bootstrap", "20", "--no-progress", "--no-plots"]  # fmt: skip
    assert main(args) == 0
    assert main(args) == 0  # the same data: resumes
    import shutil

    shutil.rmtree(built)
    build_dataset("synthetic", None, num_rows=ROWS, seed=1).save_to_disk(str(built))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "fingerprint.data:" in err and "then," in err


def test_resume_with_replaced_weights_or_another_dtype_is_refused_naming_it(vlm_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(vlm_dir, model)
    assert main(audit_args(model, tmp_path / "out", "--limit", "2")) == 0
    assert main(audit_args(model, tmp_path / "out", "--limit", "2", "--dtype", "float32")) == 2
    assert "dtype: 'auto' then, 'float32' now" in capsys.readouterr().err
    save_tiny_model(tmp_path / "other", kind="vlm", seed=1)
    shutil.copy(tmp_path / "other" / "model.safetensors", model / "model.safetensors")
    assert main(audit_args(model, tmp_path / "out", "--limit", "2")) == 2
    assert "fingerprint.model.files.model.safetensors:" in capsys.readouterr().err


def test_a_sharded_audit_records_its_manifest_before_any_process_answers(vlm_dir, tmp_path):
    """Process 1 may answer before process 0 reaches its check: its file must not be taken for another run's."""
    from fair_trl.audit.run import record_manifest, run_audit, shard_file

    rows = load_rows("synthetic", "test", options={"num_rows": ROWS})
    processor = load_processor(vlm_dir)
    settings = AuditSettings(model=vlm_dir, dataset="synthetic", dataset_options={"num_rows": ROWS},
                             output_dir=str(tmp_path / "out"), batch_size=4, bootstrap=0, progress=False)  # fmt: skip
    answers = [f"\\boxed{{{row['solution']}}}" for row in rows.dataset.remove_columns(["image", "prompt"])]

    # Process 0 records the manifest, then (after the barrier) process 1 answers first, then process 0.
    record_manifest(settings, rows)
    first = run_audit(settings, rows=rows, backend=ScriptedBackend(processor, list(answers)), shard=(1, 2))
    second = run_audit(settings, rows=rows, backend=ScriptedBackend(processor, list(answers)), shard=(0, 2))
    assert first.answered + second.answered == len(rows) > 0
    assert (tmp_path / "out" / shard_file(1, 2)).stat().st_size > 0

    # Without the manifest first, process 1's answers look like another run's and process 0 stops.
    settings.output_dir = str(tmp_path / "racing")
    run_audit(settings, rows=rows, backend=ScriptedBackend(processor, list(answers)), shard=(1, 2))
    with pytest.raises(ValueError, match="exists without audit.json"):
        run_audit(settings, rows=rows, backend=ScriptedBackend(processor, list(answers)), shard=(0, 2))
