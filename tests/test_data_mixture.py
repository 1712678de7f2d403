"""make_mixture: concatenation, caps, seeded shuffling, image -> images, schema errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from datasets import Dataset

from fair_trl.data import build_dataset, rows_to_dataset_dict
from fair_trl.data.mixture import make_mixture
from fair_trl.data.schema import MULTI_IMAGE_FEATURES, BuildSummary, png_bytes


@pytest.fixture(scope="module")
def chexpert():
    return build_dataset("synthetic", None, num_rows=60, domains=("chexpert",), seed=1)


@pytest.fixture(scope="module")
def skin():
    return build_dataset("synthetic", None, num_rows=40, domains=("ham10000", "isic2020"), seed=2)


@pytest.fixture(scope="module")
def mammo_multi():
    rows = [
        {
            "images": [png_bytes(np.full((4, 4, 3), 10 * i, np.uint8)), png_bytes(np.full((4, 4, 3), 200, np.uint8))],
            "solution": "BI-RADS 1",
            "dataset": "vindr_mammo",
            "patient_id": f"m{i}",
            "age": 50,
            "sex": "F",
        }
        for i in range(6)
    ]
    return rows_to_dataset_dict(rows, BuildSummary("vindr_mammo"), test_size=0.0)


def test_concatenates_train_splits_and_keeps_dataset_column(chexpert, skin):
    mixture = make_mixture({"chexpert": chexpert, "skin": skin})
    assert len(mixture) == len(chexpert["train"]) + len(skin["train"])
    assert Counter(mixture["dataset"]) == Counter(chexpert["train"]["dataset"]) + Counter(skin["train"]["dataset"])
    assert set(mixture.column_names) == {"prompt", "image", "solution", "dataset", "patient_id", "age", "sex"}
    # Shuffled: the first rows are not all from the first part.
    first = mixture["dataset"][: len(mixture) // 2]
    assert len(set(first)) > 1


def test_test_split_and_list_of_datasets(chexpert, skin):
    mixture = make_mixture([chexpert, skin["test"]], split="test")
    assert len(mixture) == len(chexpert["test"]) + len(skin["test"])
    with pytest.raises(ValueError, match=r"part 0 has no split 'validation'; available splits: \['test', 'train'\]"):
        make_mixture([chexpert], split="validation")


def test_seeded_deterministic_shuffle(chexpert, skin):
    a = make_mixture({"c": chexpert, "s": skin}, seed=4)
    b = make_mixture({"c": chexpert, "s": skin}, seed=4)
    c = make_mixture({"c": chexpert, "s": skin}, seed=5)
    assert a["patient_id"] == b["patient_id"]
    assert a["patient_id"] != c["patient_id"]
    assert sorted(a["patient_id"]) == sorted(c["patient_id"])


def test_caps_per_dataset_value(chexpert, skin):
    counts = Counter(skin["train"]["dataset"])
    capped = make_mixture({"c": chexpert, "s": skin}, caps=5, seed=0)
    assert Counter(capped["dataset"]) == {
        "chexpert": 5,
        "ham10000": min(5, counts["ham10000"]),
        "isic2020": min(5, counts["isic2020"]),
    }
    capped = make_mixture({"c": chexpert, "s": skin}, caps={"chexpert": 3}, seed=0)
    got = Counter(capped["dataset"])
    assert got["chexpert"] == 3 and got["ham10000"] == counts["ham10000"] and got["isic2020"] == counts["isic2020"]
    # The kept rows depend on the seed, deterministically.
    rows = {s: make_mixture({"c": chexpert}, caps=3, seed=s)["patient_id"] for s in (0, 0, 1, 2)}
    assert rows[0] == make_mixture({"c": chexpert}, caps=3, seed=0)["patient_id"]
    assert len({tuple(sorted(v)) for v in rows.values()}) > 1
    with pytest.raises(ValueError, match=r"caps name dataset\(s\) \['mimic'\].*present: \['chexpert'\]"):
        make_mixture({"c": chexpert}, caps={"mimic": 3})
    with pytest.raises(ValueError, match="cap for 'chexpert' must be a non-negative int"):
        make_mixture({"c": chexpert}, caps={"chexpert": -1})


def test_single_images_become_image_lists_when_mixed(chexpert, mammo_multi):
    mixture = make_mixture({"c": chexpert, "m": mammo_multi}, seed=0)
    assert "images" in mixture.column_names and "image" not in mixture.column_names
    assert mixture.features["images"] == MULTI_IMAGE_FEATURES["images"]
    lengths = Counter((row["dataset"], len(row["images"])) for row in mixture)
    assert lengths == {("chexpert", 1): len(chexpert["train"]), ("vindr_mammo", 2): 6}
    # The pixels survive the conversion.
    single = rows_to_dataset_dict(
        [
            {
                "image": png_bytes(np.full((4, 4, 3), 7 * i, np.uint8)),
                "solution": "NV",
                "dataset": "ham10000",
                "patient_id": f"h{i}",
                "age": None,
                "sex": None,
            }
            for i in range(5)
        ],
        BuildSummary("ham10000"),
        test_size=0.0,
    )
    mixture = make_mixture([single, mammo_multi], seed=3)
    pixels = {
        row["patient_id"]: np.asarray(row["images"][0])[0, 0, 0] for row in mixture if row["dataset"] == "ham10000"
    }
    assert pixels == {f"h{i}": 7 * i for i in range(5)}


def test_missing_schema_column_is_named(chexpert):
    broken = Dataset.from_dict({"solution": ["NV"], "dataset": ["ham10000"], "image": [None]})
    with pytest.raises(ValueError, match=r"broken lacks schema column\(s\) \['prompt', 'patient_id', 'age', 'sex'\]"):
        make_mixture({"ok": chexpert, "broken": broken})
    no_image = chexpert["train"].remove_columns("image")
    with pytest.raises(ValueError, match=r"no_image lacks schema column\(s\) \['image or images'\]"):
        make_mixture({"no_image": no_image})


def test_bad_parts():
    with pytest.raises(ValueError, match="no parts"):
        make_mixture({})
    with pytest.raises(TypeError, match="not a single dataset"):
        make_mixture(Dataset.from_dict({"a": [1]}))
    with pytest.raises(TypeError, match="x is a list"):
        make_mixture({"x": [1, 2]})


def test_extra_columns_are_dropped(chexpert):
    extra = chexpert["train"].add_column("note", ["n"] * len(chexpert["train"]))
    mixture = make_mixture({"c": extra, "d": chexpert["test"]})
    assert "note" not in mixture.column_names
    assert len(mixture) == len(chexpert["train"]) + len(chexpert["test"])
