"""The recipe's final evaluation is the audit: the card's numbers are `fair-trl audit`'s for the saved model."""

from __future__ import annotations

import json
import re
import shlex

import yaml
from test_recipes import ROOT, recipe_module

from fair_trl.audit.report import FAIRNESS_FILE, PLOT_FILES
from fair_trl.audit.store import PREDICTIONS_FILE
from fair_trl.cli import main
from fair_trl.evaluate import markdown_tables
from fair_trl.model_card import INDEX_METRICS
from fair_trl.models import save_tiny_model


def test_the_card_reports_an_audit_of_the_saved_model_that_its_command_reproduces(tmp_path, monkeypatch):
    tiny = save_tiny_model(tmp_path / "tiny", kind="vlm")
    out = tmp_path / "out"
    module = recipe_module()
    # A small version of the CPU smoke run: one optimizer step, then the final audit of the saved model.
    argv = [
        "--config", str(ROOT / "recipes" / "fairmedgemma.yaml"), "--model_name_or_path", str(tiny),
        "--dataset_name", "synthetic", "--synthetic_num_rows", "150", "--use_vllm", "false", "--use_cpu", "true",
        "--bf16", "false", "--max_steps", "1", "--per_device_train_batch_size", "4", "--num_generations", "2",
        "--gradient_accumulation_steps", "1", "--steps_per_generation", "1", "--max_completion_length", "6",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1",
        "--output_dir", str(out), "--push_to_hub", "false", "--audit_batch_size", "4", "--audit_bootstrap", "40",
    ]  # fmt: skip
    module.main(*module.make_parser().parse_args_and_config(argv))

    card = (out / "README.md").read_text()
    front, body = card[4:].split("\n---\n", 1)
    (index,) = yaml.safe_load(front)["model-index"]
    metrics = {(m["config"], m["type"]): m["value"] for m in index["results"][0]["metrics"]}
    assert (out / "audit" / PREDICTIONS_FILE).is_file()
    assert f"![F1 per group with 95% bootstrap intervals](audit/{PLOT_FILES['group_f1']})" in body
    assert (out / "audit" / PLOT_FILES["group_f1"]).stat().st_size > 0

    # The command the card gives, run as a new user would, into a fresh folder.
    command = re.search(r"```bash\n(fair-trl audit .+?)\n```", body).group(1)
    parts = shlex.split(command)
    assert parts[:2] == ["fair-trl", "audit"] and parts[-2:] == ["-o", "audit"]
    again = tmp_path / "again"
    monkeypatch.chdir(tmp_path)
    assert main([*parts[1:-2], "-o", str(again), "--no-progress"]) == 0

    audited = json.loads((again / FAIRNESS_FILE).read_text())["attributes"]
    assert set(audited) == {"sex", "age"}
    for attribute, result in audited.items():
        for metric_type, key, _ in INDEX_METRICS:
            assert metrics[(attribute, metric_type)] == round(result[key], 4), (attribute, key)
    # The card's tables are the audit's tables, line for line; so are the answers.
    assert "\n".join(markdown_tables(audited)) in body
    lines = (again / PREDICTIONS_FILE).read_text()
    assert lines == (out / "audit" / PREDICTIONS_FILE).read_text() and lines.count("\n") == audited["age"]["n"]
