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


def test_committed_report_lists_the_instrument_trial_log():
    """The report's list of instrument trials is the log as it stood: the log only ever grows."""
    import json

    from fair_trl.demo.instrument import read_trials

    demo = README.parent / "reports" / "demo"
    listed = json.loads((demo / "results.json").read_text())["instrument_trials"]
    logged = read_trials(demo / "instrument_trials.jsonl")
    assert listed and listed == logged[: len(listed)]
    assert all(set(t["settings"]) >= {"steps", "seeds", "benchmark"} for t in logged)


def test_make_demo_leaves_the_reference_report_alone():
    # `make demo` then `make test` on a fresh clone: the demo must not rewrite what this file checks.
    makefile = (README.parent / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "fair-trl demo" in recipe and "reports/" not in recipe and "--output_dir" not in recipe
    from fair_trl.cli import DemoOptions

    assert not DemoOptions().output_dir.startswith("reports")
