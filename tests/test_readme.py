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

    from fair_trl.demo.report import summary_markdown

    demo = README.parent / "reports" / "demo"
    results = json.loads((demo / "results.json").read_text())
    summary = summary_markdown(results)
    assert summary == (demo / "summary.md").read_text()
    assert summary in README.read_text(), "README's Results section differs from reports/demo: re-quote summary.md"
    for name in ("report.md", "curves.png", "pareto.png", "group_f1_difference.png"):
        assert (demo / name).is_file()
