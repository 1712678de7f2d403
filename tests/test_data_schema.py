"""The shared schema pieces (split, summary, prompts, demographics, PNG) and saving/loading splits."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from fair_trl.data import build_dataset
from fair_trl.data.loading import SUMMARY_FILE, build_and_save, is_saved_dataset, load_split
from fair_trl.data.schema import (
    INSTRUCTION,
    BuildSummary,
    make_prompt,
    png_bytes,
    schema_age,
    schema_sex,
    split_by_patient,
)
from fair_trl.labels import DATASET_LABELS

# --- split_by_patient -------------------------------------------------------------------------


def test_split_keeps_patients_whole_and_sizes_by_patient():
    ids = [f"p{i // 3}" for i in range(300)]  # 100 patients, 3 rows each
    sides = split_by_patient(ids, test_size=0.2, seed=0)
    by_patient: dict[str, set[str]] = {}
    for pid, side in zip(ids, sides, strict=True):
        by_patient.setdefault(pid, set()).add(side)
    assert all(len(s) == 1 for s in by_patient.values())
    assert Counter(next(iter(s)) for s in by_patient.values()) == {"train": 80, "test": 20}


def test_split_depends_on_patient_set_and_seed_not_row_order():
    ids = [f"p{i % 37}" for i in range(200)]
    sides = dict(zip(ids, split_by_patient(ids, 0.25, seed=3), strict=False))
    reversed_ids = ids[::-1]
    assert dict(zip(reversed_ids, split_by_patient(reversed_ids, 0.25, seed=3), strict=False)) == sides
    assert dict(zip(ids, split_by_patient(ids, 0.25, seed=4), strict=False)) != sides


def test_split_edge_cases():
    assert split_by_patient(["a", "b", "a"], test_size=0.0) == ["train"] * 3
    assert sorted(split_by_patient(["a", "b"], test_size=0.1)) == ["test", "train"]  # at least one test patient
    assert split_by_patient(["a", "a"], test_size=0.5) == ["train", "train"]  # one patient cannot be split
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="test_size must be in"):
            split_by_patient(["a"], test_size=bad)


# --- BuildSummary, schema_age, schema_sex ------------------------------------------------------


def test_schema_demographics_are_counted_in_the_summary():
    summary = BuildSummary("x")
    ages = [schema_age(v, summary, column="Age") for v in (68, "45", 0, "", "unknown", 0.4, "053Y", -3, "old", 300)]
    assert ages == [68, 45, None, None, None, 1, 53, None, None, None]
    sexes = [schema_sex(v, summary, column="gender") for v in ("Male", "f", "Unknown", None, "U", "other")]
    assert sexes == ["M", "F", None, None, None, None]
    assert summary.missing == {"Age": 3, "gender": 3}
    assert summary.invalid == {"Age": 3, "gender": 1}


def test_build_summary_dict_and_text():
    summary = BuildSummary("ham10000", rows=3, splits={"train": 2, "test": 1}, patients={"train": 2, "test": 1})
    summary.skipped["missing_image"] += 2
    summary.missing["age"] += 1
    summary.labels.update(["NV", "MEL", "NV"])
    as_dict = summary.to_dict()
    assert json.loads(json.dumps(as_dict)) == {
        "dataset": "ham10000",
        "rows": 3,
        "splits": {"train": 2, "test": 1},
        "patients": {"train": 2, "test": 1},
        "skipped": {"missing_image": 2},
        "missing": {"age": 1},
        "invalid": {},
        "labels": {"MEL": 1, "NV": 2},
    }
    text = str(summary)
    assert text.splitlines()[0] == "ham10000: 3 rows train 2, test 1"
    assert "skipped: missing_image 2" in text and "missing: age 1" in text and "invalid" not in text


# --- make_prompt -------------------------------------------------------------------------------


def test_prompt_of_a_single_label_dataset():
    prompt = make_prompt("ham10000")
    assert len(prompt) == 1 and prompt[0]["role"] == "user"
    content = prompt[0]["content"]
    assert content[0] == {"type": "image", "text": None}
    text = content[1]["text"]
    assert "Choose one of: MEL, NV, BCC, AKIEC, OTHER." in text
    assert text.endswith(INSTRUCTION) and text.count(INSTRUCTION) == 1


def test_prompt_of_chexpert_lists_all_findings_and_allows_several():
    text = make_prompt("chexpert", num_images=2)[0]["content"][-1]["text"]
    assert "Choose one or more of: " + ", ".join(DATASET_LABELS["chexpert"]) in text
    assert [c["type"] for c in make_prompt("chexpert", num_images=2)[0]["content"]] == ["image", "image", "text"]


def test_prompt_with_custom_question():
    text = make_prompt("isic2020", question="Benign or not?")[0]["content"][-1]["text"]
    assert text == f"Benign or not? Choose one of: Malignant, Benign. {INSTRUCTION}"
    # The instruction is not repeated when the question already has it.
    text = make_prompt("isic2020", question=f"Benign or not? {INSTRUCTION}")[0]["content"][-1]["text"]
    assert text.count(INSTRUCTION) == 1 and "Choose one of: Malignant, Benign." in text


def test_prompt_of_an_unknown_dataset_uses_the_question_verbatim():
    text = make_prompt("MIMIC-CXR", question="Which findings?")[0]["content"][-1]["text"]
    assert text == f"Which findings? {INSTRUCTION}"
    text = make_prompt("MIMIC-CXR", question=f"Which? {INSTRUCTION} Be brief.")[0]["content"][-1]["text"]
    assert text == f"Which? {INSTRUCTION} Be brief."
    with pytest.raises(ValueError, match="'MIMIC-CXR' is not one of .* needs a question"):
        make_prompt("MIMIC-CXR")


def test_png_bytes_round_trip_and_scaling():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    value = png_bytes(rgb)
    assert value["path"] is None
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(value["bytes"]))), rgb)
    gray = np.array([[100.0, 300.0], [200.0, 300.0]])  # e.g. DICOM pixels: scaled to 0..255
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(gray)["bytes"])))
    assert decoded.tolist() == [[0, 255], [127, 255]]  # the maximum is 255, not 254


# --- build_and_save / load_split ---------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, BuildSummary]:
    out = tmp_path_factory.mktemp("saved") / "synthetic"
    summary = build_and_save("synthetic", None, out, test_size=0.25, seed=1, progress=False, num_rows=80)
    return out, summary


def test_build_and_save_writes_dataset_and_summary(saved):
    out, summary = saved
    assert is_saved_dataset(out)
    assert summary.rows == 80 and summary.splits["train"] + summary.splits["test"] == 80
    record = json.loads((out / SUMMARY_FILE).read_text())
    assert record["rows"] == 80 and record["splits"] == summary.splits
    assert record["build"] == {"data_dir": None, "test_size": 0.25, "seed": 1, "options": {"num_rows": 80}}
    expected = build_dataset("synthetic", None, test_size=0.25, seed=1, num_rows=80)
    train = load_split(out)
    assert train["patient_id"] == expected["train"]["patient_id"]
    assert load_split(str(out), "test")["solution"] == expected["test"]["solution"]


def test_load_split_missing_split_names_available(saved):
    out, _ = saved
    with pytest.raises(ValueError, match=r"no split 'validation'; available splits: \['test', 'train'\]"):
        load_split(out, "validation")


def test_saved_single_dataset_is_returned_whatever_the_split(tmp_path: Path):
    Dataset.from_dict({"a": [1, 2]}).save_to_disk(str(tmp_path / "one"))
    assert load_split(tmp_path / "one", "test")["a"] == [1, 2]


def test_saved_dataset_embeds_image_files(tmp_path: Path):
    image = tmp_path / "release" / "x.png"
    image.parent.mkdir()
    Image.fromarray(np.full((6, 6, 3), 42, np.uint8)).save(image)
    line = {"problem": "q", "answer": "NV", "images": ["x.png"], "dataset": "HAM10000", "demo": "sex: F, age: 40"}
    (tmp_path / "release" / "data.jsonl").write_text(json.dumps(line) + "\n")
    build_and_save("climb_jsonl", tmp_path / "release" / "data.jsonl", tmp_path / "out", test_size=0.0, progress=False)
    image.unlink()  # the saved copy no longer needs the release
    row = load_split(tmp_path / "out")[0]
    assert np.asarray(row["image"])[0, 0].tolist() == [42, 42, 42]
    assert (row["age"], row["sex"], row["solution"]) == (40, "F", "NV")


def test_load_split_from_a_local_data_file_folder(tmp_path: Path):
    folder = tmp_path / "hub_like"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"solution": "NV"}\n{"solution": "MEL"}\n')
    (folder / "test.jsonl").write_text('{"solution": "BCC"}\n')
    assert not is_saved_dataset(folder)
    assert load_split(folder, "train")["solution"] == ["NV", "MEL"]
    assert load_split(str(folder), "test")["solution"] == ["BCC"]
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_split(folder, "validation")


def test_load_split_missing_local_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_split(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_split("./definitely/not/here")
