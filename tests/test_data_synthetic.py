"""The synthetic benchmark: shape, determinism, demographics, and that its planted disparities are real."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from fair_trl.data import build_dataset
from fair_trl.data.schema import BuildSummary
from fair_trl.data.synthetic import (
    GRID,
    TABLE1_COUNTS,
    SyntheticConfig,
    _domain_counts,
    is_disadvantaged,
    label_cells,
    planted_ground_truth,
    read,
)
from fair_trl.groups import age_bin
from fair_trl.labels import DATASET_LABELS


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return read(None, BuildSummary("synthetic"), seed=11, num_rows=3000)


@pytest.fixture(scope="module")
def built():
    return build_dataset("synthetic", None, num_rows=400, seed=3, return_summary=True)


def pixels(row: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"), dtype=np.float64) / 255.0


def decode(row: dict, contrast: float = SyntheticConfig().contrast) -> str:
    """Read the label off the grid: lit cells are much brighter than the image's median."""
    image = pixels(row).mean(axis=2)
    cell = image.shape[0] // GRID
    background = np.median(image)
    brightness = [
        image[r * cell + 1 : (r + 1) * cell - 1, c * cell + 1 : (c + 1) * cell - 1].mean() - background
        for r in range(GRID)
        for c in range(GRID)
    ]
    cells = label_cells(row["dataset"])
    if row["dataset"] == "chexpert":
        return ", ".join(label for label, i in cells.items() if brightness[i] > contrast / 2)
    return max(cells, key=lambda label: brightness[cells[label]])


def test_build_row_count_split_and_features(built):
    dataset_dict, summary = built
    assert set(dataset_dict) == {"train", "test"}
    assert len(dataset_dict["train"]) + len(dataset_dict["test"]) == 400 == summary.rows
    assert 0.1 < len(dataset_dict["test"]) / 400 < 0.3
    row = dataset_dict["train"][0]
    assert row["image"].size == (32, 32) and row["image"].mode == "RGB"
    assert row["prompt"][0]["content"][0]["type"] == "image"
    train_patients = set(dataset_dict["train"]["patient_id"])
    test_patients = set(dataset_dict["test"]["patient_id"])
    assert train_patients and test_patients and not train_patients & test_patients


def test_same_params_and_seed_give_identical_rows():
    a = read(None, BuildSummary("synthetic"), seed=5, num_rows=120)
    b = read(None, BuildSummary("synthetic"), seed=5, num_rows=120)
    c = read(None, BuildSummary("synthetic"), seed=6, num_rows=120)
    assert a == b
    assert [r["image"]["bytes"] for r in a] != [r["image"]["bytes"] for r in c]
    d1 = build_dataset("synthetic", None, num_rows=80, seed=2)
    d2 = build_dataset("synthetic", None, num_rows=80, seed=2)
    assert d1["train"]["solution"] == d2["train"]["solution"]
    assert d1["test"]["patient_id"] == d2["test"]["patient_id"]


def test_domain_mix_is_chexpert_heavy_with_a_floor(rows):
    counts = Counter(r["dataset"] for r in rows)
    assert set(counts) == set(TABLE1_COUNTS)
    assert counts.most_common(1)[0][0] == "chexpert"
    assert counts["chexpert"] > 0.6 * len(rows)
    assert counts["isic2020"] > counts["ham10000"] > counts["pad_ufes20"]
    assert min(counts.values()) >= 0.02 * len(rows) - 1  # the floor lifts covid_blues (0.13% in Table 1)
    assert counts == Counter(_domain_counts(SyntheticConfig(num_rows=3000)))
    tiny = _domain_counts(SyntheticConfig(num_rows=7))
    assert sum(tiny.values()) == 7 and min(tiny.values()) == 1


def test_domain_subset():
    # Table 1 proportions among the chosen domains: 10,015 : 362 is 96.5% : 3.5%.
    assert _domain_counts(SyntheticConfig(num_rows=100, domains=("ham10000", "covid_blues"))) == {
        "ham10000": 97,
        "covid_blues": 3,
    }
    # 362 : 212,498 is 0.17%, lifted to the 2% floor.
    assert _domain_counts(SyntheticConfig(num_rows=100, domains=("chexpert", "covid_blues"))) == {
        "chexpert": 98,
        "covid_blues": 2,
    }
    rows = read(None, BuildSummary("synthetic"), domains=("hemorrhage",), num_rows=30)
    assert {r["dataset"] for r in rows} == {"hemorrhage"} and len(rows) == 30


def test_labels_are_canonical_and_multi_label_only_for_chexpert(rows):
    multi = Counter()
    for row in rows:
        labels = row["solution"].split(", ")
        allowed = DATASET_LABELS[row["dataset"]]
        assert set(labels) <= set(allowed)
        assert labels == sorted(labels, key=allowed.index)  # canonical order
        if len(labels) > 1:
            multi[row["dataset"]] += 1
            assert "No Finding" not in labels
            assert len(labels) <= 3
    assert set(multi) == {"chexpert"}
    chexpert = [r["solution"] for r in rows if r["dataset"] == "chexpert"]
    assert 0.05 < chexpert.count("No Finding") / len(chexpert) < 0.25
    # Every label of the single-label domains occurs (label_floor), e.g. ISIC malignant.
    for domain in ("ham10000", "isic2020", "vindr_mammo", "hemorrhage"):
        seen = {r["solution"] for r in rows if r["dataset"] == domain}
        assert seen == set(DATASET_LABELS[domain]), domain


def test_demographics(rows):
    summary = BuildSummary("synthetic")
    read(None, summary, seed=11, num_rows=3000)
    hidden = [r for r in rows if r["age"] is None]
    assert 0.07 < len(hidden) / len(rows) < 0.13
    assert all(r["sex"] is None for r in hidden)
    assert summary.missing["age"] == len(hidden)
    covid = [r for r in rows if r["dataset"] == "covid_blues"]
    assert covid and all(r["sex"] is None for r in covid)
    assert any(r["age"] is not None for r in covid)
    assert summary.missing["sex"] == len(hidden) + sum(r["age"] is not None for r in covid)
    assert {r["sex"] for r in rows if r["dataset"] == "vindr_mammo" and r["age"] is not None} == {"F"}
    chexpert_sex = Counter(r["sex"] for r in rows if r["dataset"] == "chexpert" and r["sex"])
    assert 0.3 < chexpert_sex["F"] / sum(chexpert_sex.values()) < 0.5
    bins = Counter(age_bin(r["age"]) for r in rows if r["age"] is not None)
    known = sum(bins.values())
    assert bins["a1"] / known < 0.12 and bins["a4"] / known < 0.2
    assert bins["a3"] > bins["a2"] > bins["a4"] > bins["a1"] > 0
    assert all(18 <= r["age"] <= 90 for r in rows if r["age"] is not None)


def test_patients_have_one_to_three_rows_with_consistent_demographics(rows):
    per_patient: dict[str, list[dict]] = {}
    for row in rows:
        per_patient.setdefault(row["patient_id"], []).append(row)
    sizes = Counter(len(v) for v in per_patient.values())
    assert set(sizes) <= {1, 2, 3} and sizes[1] and sizes[2] and sizes[3]
    for patient, patient_rows in per_patient.items():
        assert patient.startswith(patient_rows[0]["dataset"] + "-p")
        assert len({(r["age"], r["sex"], r["dataset"]) for r in patient_rows}) == 1


def test_label_is_readable_from_the_image_except_for_planted_groups(rows):
    config = SyntheticConfig()
    visible = [r for r in rows if r["age"] is not None]
    majority = [r for r in visible if not is_disadvantaged(r["dataset"], r["age"], r["sex"], config)]
    minority = [r for r in visible if is_disadvantaged(r["dataset"], r["age"], r["sex"], config)]
    assert len(minority) > 100 and len(majority) > 1000
    majority_acc = np.mean([decode(r) == r["solution"] for r in majority])
    minority_acc = np.mean([decode(r) == r["solution"] for r in minority])
    assert majority_acc > 0.97
    # About 1 - shift_prob of the planted rows still show the right cells.
    assert 0.45 < minority_acc < 0.8
    # The planted rows are noisier too.
    spread = {
        name: np.median([np.std(np.diff(pixels(r), axis=1)) for r in group[:200]])
        for name, group in (("majority", majority), ("minority", minority))
    }
    assert spread["minority"] > 2 * spread["majority"]


def test_no_planted_disparity_when_switched_off():
    rows = read(None, BuildSummary("synthetic"), seed=1, num_rows=400, shift_prob=0.0, minority_noise_std=0.06)
    assert np.mean([decode(r) == r["solution"] for r in rows]) > 0.97


def test_is_disadvantaged_and_ground_truth():
    config = SyntheticConfig()
    assert is_disadvantaged("chexpert", 80, "M", config)
    assert is_disadvantaged("vindr_mammo", 20, "F", config)
    assert not is_disadvantaged("chexpert", 60, "F", config)
    assert is_disadvantaged("ham10000", 60, "F", config)
    assert not is_disadvantaged("ham10000", 60, "M", config)
    assert not is_disadvantaged("ham10000", None, None, config)
    custom = SyntheticConfig(disadvantaged=("chexpert:sex=F|age=a3",))
    assert is_disadvantaged("chexpert", 60, "F", custom)
    assert not is_disadvantaged("chexpert", 60, "M", custom) and not is_disadvantaged("ham10000", 60, "F", custom)

    truth = planted_ground_truth()
    assert set(truth["domains"]) == set(DATASET_LABELS)
    assert truth["domains"]["chexpert"]["disadvantaged"] == ["age=a1", "age=a4"]
    assert truth["domains"]["ham10000"]["disadvantaged"] == ["age=a1", "age=a4", "sex=F"]
    assert truth["domains"]["covid_blues"]["disadvantaged"] == ["age=a1", "age=a4"]
    assert truth["shift_prob"] == config.shift_prob
    custom_truth = planted_ground_truth(disadvantaged=("age=a4|sex=F",), domains=("chexpert", "covid_blues"))
    assert custom_truth["domains"] == {
        "chexpert": {"disadvantaged": ["sex=F|age=a4"]},
        "covid_blues": {"disadvantaged": []},
    }


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"num_row": 10}, TypeError, r"num_row.*valid parameters"),
        ({"num_rows": 3}, ValueError, r"num_rows=3"),
        ({"num_rows": 2.5}, ValueError, r"num_rows"),
        ({"image_size": 30}, ValueError, r"image_size=30.*multiple of 4"),
        ({"shift_prob": 1.5}, ValueError, r"shift_prob=1.5"),
        ({"missing_demographics": -0.1}, ValueError, r"missing_demographics"),
        ({"domains": ("chexpert", "mimic")}, ValueError, r"domains"),
        ({"disadvantaged": ("age=a9",)}, ValueError, r"age=a9"),
        ({"disadvantaged": ("mimic:sex=F",)}, ValueError, r"unknown domain 'mimic'"),
        ({"age_bin_probs": (0.5, 0.5, 0.5, 0.5)}, ValueError, r"age_bin_probs"),
    ],
)
def test_bad_parameters_raise_clearly(options, error, match):
    with pytest.raises(error, match=match):
        build_dataset("synthetic", None, **options)


def test_data_dir_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="data_dir=None"):
        build_dataset("synthetic", tmp_path, num_rows=10)


def test_image_size_option():
    rows = read(None, BuildSummary("synthetic"), num_rows=10, image_size=16)
    assert pixels(rows[0]).shape == (16, 16, 3)
