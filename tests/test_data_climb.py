"""The authors' jsonl format: labels, dataset names, demographics, images, patients, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fair_trl.data import build_dataset
from fair_trl.data.climb_jsonl import parse_demo, read
from fair_trl.data.schema import INSTRUCTION, BuildSummary


def write_image(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def record(image: str | list, answer: str, dataset: str, demo: str | None = None, **extra) -> dict:
    out = {
        "problem": "<image>\nWhat is shown in this image? Answer with the label.",
        "answer": answer,
        "images": image if isinstance(image, list) else [image],
        "dataset": dataset,
        **extra,
    }
    if demo is not None:
        out["demo"] = demo
    return out


@pytest.fixture
def release(tmp_path: Path) -> Path:
    for name in ("cxr1", "cxr2", "skin1", "skin2", "pad1", "mimic1", "view_a", "view_b"):
        write_image(tmp_path / "images" / f"{name}.png")
    absolute = tmp_path / "elsewhere" / "abs1.png"
    write_image(absolute)
    records = [
        record("images/cxr1.png", "Pleural Effusion, Cardiomegaly", "CheXpert", "sex: Male, age: 68", id="p1"),
        record("images/cxr2.png", "no finding", "CheXpert", "sex: unknown, age: 0", id="p1"),
        record("images/skin1.png", "melanoma", "HAM10000", "age: 45"),
        record("images/skin2.png", "NV", "HAM10000", None, patient_id="ham-7", sex="female", age=30),
        record("images/pad1.png", "ACK", "PAD-UFES-20", "sex: Female, age: unknown"),
        record("images/mimic1.png", "Edema, Atelectasis", "MIMIC-CXR", "gender: M, age: 70"),
        record(["images/view_a.png", "images/view_b.png"], "BI-RADS 2", "VinDr-Mammo", "sex: F, age: 053Y"),
        record(str(absolute), "Benign", "ISIC2020", "sex: Male, age: 200"),
        record("images/gone.png", "MEL", "HAM10000", "sex: Male, age: 50"),
        record("images/skin1.png", "Maybe", "HAM10000", "sex: Male, age: 50"),
        "",
    ]
    return write_jsonl(tmp_path / "train.jsonl", records)


def test_rows_labels_datasets_and_demographics(release: Path):
    summary = BuildSummary("climb_jsonl")
    rows = read(release, summary)
    assert [r["dataset"] for r in rows] == [
        "chexpert",
        "chexpert",
        "ham10000",
        "ham10000",
        "pad_ufes20",
        "MIMIC-CXR",
        "vindr_mammo",
        "isic2020",
    ]
    assert [r["solution"] for r in rows] == [
        "Cardiomegaly, Pleural Effusion",  # canonical order, not the answer's
        "No Finding",
        "MEL",
        "NV",
        "AKIEC",
        "Edema, Atelectasis",  # unknown dataset: kept as written
        "BI-RADS 2",
        "Benign",
    ]
    assert [(r["age"], r["sex"]) for r in rows] == [
        (68, "M"),
        (None, None),
        (45, None),
        (30, "F"),
        (None, "F"),
        (70, "M"),
        (53, "F"),
        (None, "M"),
    ]
    assert [r["patient_id"] for r in rows] == ["p1", "p1", "skin1", "ham-7", "pad1", "mimic1", "view_a", "abs1"]
    assert summary.skipped == {"missing_image": 1, "unknown_label": 1}
    assert summary.missing["age"] == 2 and summary.missing["sex"] == 2  # age 0 and "unknown"; sex unknown + absent
    assert summary.invalid["age"] == 1  # age 200
    assert rows[0]["image"] == str((release.parent / "images" / "cxr1.png").resolve())
    assert rows[6]["images"] == [str((release.parent / "images" / f"view_{v}.png").resolve()) for v in "ab"]
    assert "image" not in rows[6]
    assert rows[7]["image"] == str((release.parent / "elsewhere" / "abs1.png").resolve())
    assert rows[0]["question"] == "What is shown in this image? Answer with the label."


def test_build_dataset_prompts_and_multi_image(release: Path):
    dataset_dict, summary = build_dataset("climb_jsonl", release, test_size=0.3, return_summary=True)
    assert summary.rows == 8
    everything = [row for split in dataset_dict.values() for row in split]
    assert {len(row["images"]) for row in everything} == {1, 2}  # one multi-image row -> images everywhere
    prompts = {row["dataset"]: row["prompt"][0]["content"] for row in everything}
    mimic_text = prompts["MIMIC-CXR"][-1]["text"]
    assert mimic_text == f"What is shown in this image? Answer with the label. {INSTRUCTION}"
    assert "<image>" not in mimic_text
    chexpert_text = prompts["chexpert"][-1]["text"]
    assert "Choose one or more of: Atelectasis" in chexpert_text and chexpert_text.endswith(INSTRUCTION)
    assert [c["type"] for c in prompts["vindr_mammo"]] == ["image", "image", "text"]
    train, test = (set(dataset_dict[s]["patient_id"]) for s in ("train", "test"))
    assert not train & test


def test_single_image_file_gives_image_column_and_keeps_instruction_once(tmp_path: Path):
    write_image(tmp_path / "a.png")
    problem = f"<image> Is this lesion malignant? {INSTRUCTION}"
    path = write_jsonl(
        tmp_path / "one.jsonl",
        [{"problem": problem, "answer": "Malignant", "images": ["a.png"], "dataset": "Derm-X", "demo": "age: 33"}],
    )
    summary = BuildSummary("climb_jsonl")
    rows = read(path, summary)
    assert rows[0]["image"].endswith("a.png") and rows[0]["age"] == 33 and rows[0]["sex"] is None
    dataset_dict = build_dataset("climb_jsonl", path, test_size=0.0)
    text = dataset_dict["train"][0]["prompt"][0]["content"][-1]["text"]
    assert text == f"Is this lesion malignant? {INSTRUCTION}"
    assert text.count(INSTRUCTION) == 1
    assert "image" in dataset_dict["train"].column_names


def test_directory_reads_every_jsonl(tmp_path: Path):
    write_image(tmp_path / "img" / "x.png")
    write_image(tmp_path / "img" / "y.png")
    write_jsonl(tmp_path / "train.jsonl", [record("img/x.png", "Has Hemorrhage", "Hemorrhage", "sex: M, age: 40")])
    write_jsonl(tmp_path / "sub" / "test.jsonl", [record("../img/y.png", "Has COVID", "COVID-BLUES", "age: 61")])
    rows = read(tmp_path, BuildSummary("climb_jsonl"))
    assert [(r["dataset"], r["solution"]) for r in rows] == [
        ("covid_blues", "Has COVID"),
        ("hemorrhage", "Has Hemorrhage"),
    ]


def test_malformed_line_names_file_and_line(tmp_path: Path):
    write_image(tmp_path / "x.png")
    good = record("x.png", "NV", "HAM10000")
    path = write_jsonl(tmp_path / "bad.jsonl", [good, "", '{"problem": "q", "answer": '])
    with pytest.raises(ValueError, match=r"bad\.jsonl line 3 is not valid JSON"):
        read(path, BuildSummary("climb_jsonl"))
    path = write_jsonl(tmp_path / "list.jsonl", [good, "[1, 2]"])
    with pytest.raises(ValueError, match=r"list\.jsonl line 2 is not a JSON object"):
        read(path, BuildSummary("climb_jsonl"))


def test_missing_field_names_field_file_line_and_present_fields(tmp_path: Path):
    write_image(tmp_path / "x.png")
    path = write_jsonl(tmp_path / "f.jsonl", [{"problem": "q", "images": ["x.png"], "dataset": "HAM10000"}])
    with pytest.raises(
        ValueError, match=r"f\.jsonl line 1 lacks field\(s\) \['answer'\].*'dataset', 'images', 'problem'"
    ):
        read(path, BuildSummary("climb_jsonl"))


def test_missing_path_and_empty_directory(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read(tmp_path / "nothing.jsonl", BuildSummary("climb_jsonl"))
    with pytest.raises(FileNotFoundError, match=rf"no \*\.jsonl file found in directory {tmp_path}"):
        read(tmp_path, BuildSummary("climb_jsonl"))


def test_empty_images_are_skipped(tmp_path: Path):
    write_image(tmp_path / "x.png")
    path = write_jsonl(
        tmp_path / "e.jsonl", [record([], "NV", "HAM10000"), record("x.png", "Benign", "isic", "sex: Female")]
    )
    summary = BuildSummary("climb_jsonl")
    rows = read(path, summary)
    assert [(r["dataset"], r["sex"]) for r in rows] == [("isic2020", "F")]
    assert summary.skipped == {"no_image": 1}


@pytest.mark.parametrize(
    ("demo", "expected"),
    [
        ("sex: Male, age: 68", ("68", "Male")),
        ("age: 45", ("45", None)),
        ("Sex: female", (None, "female")),
        ("gender: unknown; age: 0", ("0", "unknown")),
        (None, (None, None)),
        ("", (None, None)),
    ],
)
def test_parse_demo(demo, expected):
    assert parse_demo(demo) == expected
