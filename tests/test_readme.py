"""The README's promises: its Python snippet runs, and its commands exist."""

import ast
import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippet_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no python block"
    script = tmp_path / "snippet.py"
    script.write_text(blocks[0])
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    counts = ast.literal_eval(printed.strip().splitlines()[-1])  # the snippet prints {domain: prompts seen}
    assert sum(counts.values()) == 2 * 16 // 4  # two steps of four prompts
    assert (tmp_path / "fairgrpo-tiny").is_dir()


def test_readme_trl_example_runs_with_either_import(tmp_path, monkeypatch, caplog):
    """The "change one import" example trains as FairGRPO, and as plain TRL with TRL's import put back."""
    import logging

    section = README.read_text().split("### Coming from TRL: change one import\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    trl_import, fair_import = "# from trl import GRPOConfig, GRPOTrainer\n", "from fair_trl import FairGRPOConfig as"
    assert trl_import in code and code.count(fair_import) == 1
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fair.py").write_text(code)
    with caplog.at_level(logging.WARNING, logger="fair_trl"):
        fair = runpy.run_path(str(tmp_path / "fair.py"), run_name="__main__")["trainer"]
    assert type(fair).__name__ == "FairGRPOTrainer" and fair.state.global_step == 2
    assert (fair.args.domain_column, fair.args.demographic_columns) == (None, [])
    assert fair.fair_estimator.lowest_reward < 0  # the quickstart reward is a penalty: measured, not refused
    assert sum("has no column 'dataset'" in r.getMessage() for r in caplog.records) == 1

    lines = [line for line in code.splitlines(keepends=True) if not line.startswith(fair_import)]
    (tmp_path / "trl.py").write_text("".join(lines).replace(trl_import, trl_import.removeprefix("# ")))
    plain = runpy.run_path(str(tmp_path / "trl.py"), run_name="__main__")["trainer"]
    assert type(plain).__name__ == "GRPOTrainer" and plain.state.global_step == 2


def test_readme_commands_are_make_targets():
    makefile = (README.parent / "Makefile").read_text()
    commands = re.findall(r"^make (\w+)", README.read_text(), flags=re.MULTILINE)
    assert commands == ["demo", "test"]
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE)
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_readme_results_quote_the_committed_demo_report():
    import json

    from fair_trl.demo.plots import PLOTS
    from fair_trl.demo.report import markdown, summary_markdown

    demo = README.parent / "reports" / "demo"
    results = json.loads((demo / "results.json").read_text())
    summary = summary_markdown(results)
    assert summary == (demo / "summary.md").read_text()
    assert summary in README.read_text(), "README's Results section differs from reports/demo: re-quote summary.md"
    assert markdown(results) == (demo / "report.md").read_text()
    for name in PLOTS:
        assert (demo / name).is_file()


def test_readme_quotes_the_gate_on_every_published_planting():
    from fair_trl.demo.plantings import PLANTINGS_FILE, plantings_markdown

    demo = README.parent / "reports" / "demo"
    table = plantings_markdown(demo)
    assert table == (demo / PLANTINGS_FILE).read_text(), "a planting was published without rewriting plantings.md"
    assert table.count("| valid |") + table.count("| invalid |") >= 3  # the default and two other plantings
    assert table in README.read_text(), "README's plantings table differs from reports/demo: re-quote plantings.md"
    # The README's word on how often a quick run's gate sees the cut is the reference study's.
    import json

    from fair_trl.demo.instrument import gate_power

    power = gate_power(json.loads((demo / "results.json").read_text()))
    assert f"({power['chance']:.0%} on the default planting:" in README.read_text()


def test_committed_report_lists_the_instrument_trial_log():
    """The report's list of instrument trials is the log as it stood: the log only ever grows."""
    import json

    from fair_trl.demo.instrument import read_trials

    demo = README.parent / "reports" / "demo"
    listed = json.loads((demo / "results.json").read_text())["instrument_trials"]
    logged = read_trials(demo / "instrument_trials.jsonl")
    assert listed and listed == logged[: len(listed)]
    assert all(set(t["settings"]) >= {"steps", "seeds", "benchmark"} for t in logged)


def test_readme_quotes_instrument_trials_as_logged():
    """Every "trial #N: MEAN [LOW, HIGH]" in the README is line N of the trial log: control - GRPO ΔF1."""
    import re

    from fair_trl.demo.instrument import read_trials

    logged = read_trials(README.parent / "reports" / "demo" / "instrument_trials.jsonl")
    quoted = re.findall(r"trial #(\d+): ([+-]\d\.\d{3}) \[([+-]\d\.\d{3}), ([+-]\d\.\d{3})\]", README.read_text())
    assert quoted, "the README quotes no trial"
    for number, *figures in quoted:
        diff = logged[int(number) - 1]["control_vs_grpo_delta_f1"]
        assert figures == [f"{diff['mean']:+.3f}", f"{diff['ci'][0]:+.3f}", f"{diff['ci'][1]:+.3f}"], number


def test_make_demo_leaves_the_reference_report_alone():
    # `make demo` then `make test` on a fresh clone: the demo must not rewrite what this file checks.
    makefile = (README.parent / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "fair-trl demo" in recipe and "reports/" not in recipe and "--output_dir" not in recipe
    from fair_trl.demo.command import DemoOptions

    assert not DemoOptions().output_dir.startswith("reports")


def write_patient_csv(folder: Path, rows: int = 60) -> None:
    """A `cxr.csv` of image paths, labels, PatientAge ("034Y", plain years or blank), PatientSex and PatientID."""
    import csv

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    with open(folder / "cxr.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "label", "PatientAge", "PatientSex", "PatientID", "dataset"])
        for i in range(rows):
            path = f"images/{i:04d}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / path)
            age, sex = ["034Y", "061Y", "", "45", "78"][i % 5], ["F", "M", "M", "F", ""][i % 4]
            writer.writerow([path, ["Normal", "Pneumonia"][i % 2], age, sex, f"p{i // 2}", "chest_xray"])


def test_bring_your_own_data_runs_as_written(tmp_path, monkeypatch):
    """The section's commands and code, in order, on a generated CSV: inspect, train, audit."""
    import json
    import shlex
    import subprocess
    import sys

    section = README.read_text().split("## Bring your own data\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.DOTALL)
    assert [kind for kind, _ in blocks] == ["bash", "python", "bash"]
    write_patient_csv(tmp_path)
    monkeypatch.chdir(tmp_path)
    fair_trl = str(Path(sys.executable).parent / "fair-trl")
    for kind, code in blocks:
        if kind == "python":
            (tmp_path / "byod.py").write_text(code)
            runpy.run_path(str(tmp_path / "byod.py"), run_name="__main__")
            continue
        command = shlex.split(code.replace("\\\n", " "))
        assert command[0] == "fair-trl"
        run = subprocess.run([fair_trl, *command[1:]], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    domain = json.loads((tmp_path / "cxr_inspect.json").read_text())["domains"]["chest_xray"]
    assert domain["label_set"] == ["Normal", "Pneumonia"] and domain["label_source"] == "declared"
    groups = {g["group"]: g["prompts"] for g in domain["groups"]}
    # 034Y and 45 land in a2, 061Y in a3, 78 in a4. A blank age or sex leaves the row partly known: it joins
    # the commonest complete group that agrees with it (12 such rows, 6 into each a2 group), not a latent one.
    assert domain["partly_known_assigned"] == 12 and domain["unknown_share"] == 0.0
    assert groups["PatientAge=a2|PatientSex=F"] == 12 + 6 and "unknown (latent groups)" not in groups
    assert (tmp_path / "cxr-fairgrpo" / "model.safetensors").is_file()
    fairness = json.loads((tmp_path / "cxr-audit" / "fairness.json").read_text())
    assert set(fairness["attributes"]) == {"PatientAge", "PatientSex"}
    from datasets import load_from_disk

    assert fairness["samples"] == len(load_from_disk(str(tmp_path / "cxr_data"))["test"])  # the held-out patients
