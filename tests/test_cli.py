"""`fair-trl` subcommands as a user runs them."""

import json

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from fair_trl.cli import main
from fair_trl.data.loading import load_split


def test_tiny_model_command_saves_a_loadable_vlm(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "vlm"), "--kind", "vlm"]) == 0
    assert "saved tiny vlm model" in capsys.readouterr().out
    AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm")
    AutoProcessor.from_pretrained(tmp_path / "vlm")


def test_tiny_model_rejects_unknown_kind(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["tiny-model", str(tmp_path), "--kind", "audio"])
    assert "invalid choice: 'audio'" in capsys.readouterr().err


def test_build_dataset_saves_a_loadable_split_with_its_summary(tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert main(["build-dataset", "synthetic", "-", str(out), "-o", "num_rows=60", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("synthetic: 60 rows") and f"saved to {out}" in printed
    summary = json.loads((out / "build_summary.json").read_text())
    assert summary["rows"] == 60 and summary["build"]["options"] == {"num_rows": 60}
    train = load_split(out, "train")
    test = load_split(str(out), "test")
    assert len(train) + len(test) == 60 and len(train) == summary["splits"]["train"]
    assert not set(train["patient_id"]) & set(test["patient_id"])
    assert train.features["image"].decode and train[0]["image"].size == (32, 32)


def test_build_dataset_errors_name_what_is_wrong(tmp_path, capsys):
    assert main(["build-dataset", "ham10000", str(tmp_path / "absent"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "HAM10000_metadata.csv" in err and "absent" in err
    assert main(["build-dataset", "synthetic", "-", str(tmp_path / "out"), "-o", "colour=red"]) == 2
    assert "unknown parameter(s) ['colour']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build-dataset", "synthetic", "-", str(tmp_path / "out"), "-o", "num_rows"])
    assert "--option needs KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build-dataset", "mimic", "-", str(tmp_path / "out")])
    assert "unknown dataset 'mimic'" in capsys.readouterr().err
