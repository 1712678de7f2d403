"""`fair-trl` subcommands as a user runs them."""

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from fair_trl.cli import main


def test_tiny_model_command_saves_a_loadable_vlm(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "vlm"), "--kind", "vlm"]) == 0
    assert "saved tiny vlm model" in capsys.readouterr().out
    AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm")
    AutoProcessor.from_pretrained(tmp_path / "vlm")


def test_tiny_model_rejects_unknown_kind(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["tiny-model", str(tmp_path), "--kind", "audio"])
    assert "invalid choice: 'audio'" in capsys.readouterr().err


def test_demo_prints_per_group_rewards(capsys):
    assert main(["demo", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("Mean reward per demographic group") :].splitlines()
    assert table[1].split() == ["group", "early", "late", "n"]
    rows = [line.split() for line in table[2:] if line.strip()]
    assert any(row[0].startswith("sex=") for row in rows)
    assert sum(int(row[-1]) for row in rows) == 3 * 64  # every scored completion lands in one group
