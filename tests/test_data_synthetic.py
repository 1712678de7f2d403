"""The synthetic benchmark: shape, determinism, demographics, and that its planted disparities are real."""

from __future__ import annotations

import hashlib
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
    _cue_patterns,
    _domain_counts,
    _label_set_probs,
    best_accuracy,
    is_disadvantaged,
    label_cells,
    planted_ground_truth,
    planted_shift,
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


def cell_brightness(row: dict) -> list[float]:
    """Each grid cell's mean brightness above the image's median, in row-major cell order."""
    image = pixels(row).mean(axis=2)
    cell = image.shape[0] // GRID
    background = np.median(image)
    return [
        image[r * cell + 1 : (r + 1) * cell - 1, c * cell + 1 : (c + 1) * cell - 1].mean() - background
        for r in range(GRID)
        for c in range(GRID)
    ]


def decode(row: dict, contrast: float = SyntheticConfig().contrast) -> str:
    """Read the label off the grid: lit cells are much brighter than the image's median."""
    brightness = cell_brightness(row)
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


def lit_labels(row: dict, contrast: float = SyntheticConfig().contrast) -> list[int]:
    """Indices (into the domain's labels) of the cells that are lit, whatever labels they stand for."""
    brightness = cell_brightness(row)
    cells = list(label_cells(row["dataset"]).values())
    if row["dataset"] == "chexpert":
        return [k for k, i in enumerate(cells) if brightness[i] > contrast / 2]
    return [int(np.argmax([brightness[i] for i in cells]))]


AGE_OF_BIN = {"a1": 20, "a2": 40, "a3": 60, "a4": 80}


def read_cue(row: dict) -> tuple[int, str | None]:
    """The patient's (age bin's representative age, sex) from the pattern cue, by matched filters."""
    image = pixels(row).mean(axis=2)
    patterns = _cue_patterns(image.shape[0])
    score = {name: float((image * pattern).mean()) for name, pattern in patterns.items()}
    age = max(AGE_OF_BIN, key=lambda b: score[b])
    sex = None if row["dataset"] == "covid_blues" else ("F" if score["F"] > SyntheticConfig().cue_strength / 2 else "M")
    return AGE_OF_BIN[age], sex


def oracle(row: dict, config: SyntheticConfig) -> str:
    """A reader that looks at the cue, knows each group's rule, and undoes it."""
    age, sex = read_cue(row)
    shift = planted_shift(row["dataset"], age, sex, config)
    labels = DATASET_LABELS[row["dataset"]]
    shown = sorted((k - shift) % len(labels) for k in lit_labels(row))
    return ", ".join(labels[k] for k in shown)


def group_accuracy(rows: list[dict], answer) -> dict[str, float]:
    hits: dict[str, list[bool]] = {}
    for row in rows:
        if row["age"] is None:
            continue
        ok = answer(row) == row["solution"]
        for key in (f"age={age_bin(row['age'])}", f"sex={row['sex']}"):
            hits.setdefault(key, []).append(ok)
    return {key: float(np.mean(v)) for key, v in sorted(hits.items()) if key != "sex=None"}


def test_an_oracle_reader_is_equally_accurate_on_every_group(rows):
    config = SyntheticConfig()
    oracle_accuracy = group_accuracy(rows, lambda r: oracle(r, config))
    assert set(oracle_accuracy) == {"age=a1", "age=a2", "age=a3", "age=a4", "sex=F", "sex=M"}
    assert max(oracle_accuracy.values()) - min(oracle_accuracy.values()) <= 0.02, oracle_accuracy
    assert min(oracle_accuracy.values()) > 0.97
    # The cue is read right for hidden patients too (their images show their true demographics).
    hidden = [r for r in rows if r["age"] is None]
    assert np.mean([oracle(r, config) == r["solution"] for r in hidden]) > 0.97
    # What the ground truth promises: every group can be read perfectly.
    assert all(value == pytest.approx(1.0) for value in planted_ground_truth()["best_accuracy"].values())


def test_the_usual_mapping_fails_on_the_planted_groups(rows):
    config = SyntheticConfig()
    visible = [r for r in rows if r["age"] is not None]
    planted = [r for r in visible if is_disadvantaged(r["dataset"], r["age"], r["sex"], config)]
    majority = [r for r in visible if not is_disadvantaged(r["dataset"], r["age"], r["sex"], config)]
    assert len(planted) > 100 and len(majority) > 1000
    assert np.mean([decode(r) == r["solution"] for r in majority]) > 0.97
    # Every planted row shows its labels by its group's rule, never by the usual one.
    assert np.mean([decode(r) == r["solution"] for r in planted]) < 0.02


def test_each_planted_group_has_its_own_rule():
    truth = planted_ground_truth()
    ham = truth["domains"]["ham10000"]
    assert ham["disadvantaged"] == ["age=a1", "age=a4", "sex=F"]
    assert [ham["rules"][g]["shift"] for g in ham["disadvantaged"]] == [1, 2, 3]
    assert ham["rules"]["age=a1"]["permutation"]["MEL"] == "NV"  # MEL is drawn in NV's cell
    assert sorted(ham["rules"]["age=a4"]["permutation"].values()) == sorted(DATASET_LABELS["ham10000"])
    # A two-label domain has one rule to give, the swap; a row matching several groups follows the first.
    assert {r["shift"] for r in truth["domains"]["isic2020"]["rules"].values()} == {1}
    assert planted_shift("ham10000", 80, "F") == 2 and planted_shift("ham10000", 40, "F") == 3
    assert planted_shift("ham10000", 40, "M") == 0


def test_noisy_shift_profile_reproduces_the_first_planting_exactly():
    # Pixels and metadata of the benchmark as first released (profile "noisy_shift" is how it was built).
    rows = read(None, BuildSummary("synthetic"), seed=3, num_rows=200, profile="noisy_shift")
    digest = hashlib.sha256()
    for row in rows:
        digest.update(np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")).tobytes())
        digest.update(repr((row["solution"], row["dataset"], row["patient_id"], row["age"], row["sex"])).encode())
    assert digest.hexdigest() == "422374fd583accb346542da56359ed0aa60ef5b3fea270acb3f898627292c942"


def test_noisy_shift_caps_the_planted_groups_where_the_ground_truth_says():
    config = SyntheticConfig(profile="noisy_shift", num_rows=6000)
    rows = read(None, BuildSummary("synthetic"), seed=4, config=config)
    visible = [r for r in rows if r["age"] is not None]
    majority = [r for r in visible if not is_disadvantaged(r["dataset"], r["age"], r["sex"], config)]
    assert np.mean([decode(r) == r["solution"] for r in majority]) > 0.97

    # A reader that knows the group and the shift but not whether this row was shifted: per shown
    # label set it picks the likelier of "as shown" and "shifted back", as `best_accuracy` assumes.
    def bayes(row):
        labels = DATASET_LABELS[row["dataset"]]
        shown = tuple(sorted(lit_labels(row)))
        if not is_disadvantaged(row["dataset"], row["age"], row["sex"], config):
            return ", ".join(labels[k] for k in shown)
        probs = _label_set_probs(row["dataset"], config)
        back = tuple(sorted((k - 1) % len(labels) for k in shown))
        p = config.shift_prob
        best = back if probs.get(back, 0.0) * p > probs.get(shown, 0.0) * (1 - p) else shown
        return ", ".join(labels[k] for k in best)

    for domain in ("chexpert", "isic2020"):
        in_domain = [r for r in visible if r["dataset"] == domain]
        planted = [r for r in in_domain if is_disadvantaged(domain, r["age"], r["sex"], config)]
        measured = np.mean([bayes(r) == r["solution"] for r in planted])
        promised = best_accuracy(domain, 1, config)
        assert measured == pytest.approx(promised, abs=3 / np.sqrt(len(planted))), (domain, len(planted))
    truth = planted_ground_truth(config)
    assert truth["best_accuracy"]["age=a1"] < truth["best_accuracy"]["age=a2"] - 0.1  # irreducible gap
    # Noisier, too.
    planted = [r for r in visible if is_disadvantaged(r["dataset"], r["age"], r["sex"], config)]
    spread = {
        name: np.median([np.std(np.diff(pixels(r), axis=1)) for r in group[:200]])
        for name, group in (("majority", majority), ("planted", planted))
    }
    assert spread["planted"] > 2 * spread["majority"]


def test_best_accuracy_of_a_single_label_rule():
    config = SyntheticConfig(shift_prob=0.5)
    # Two labels, swapped half of the time: the reader can do no better than the larger prior.
    prior = np.maximum(np.array([0.87, 0.13]), config.label_floor)
    prior /= prior.sum()
    assert best_accuracy("hemorrhage", 1, config) == pytest.approx(prior.max())
    assert best_accuracy("hemorrhage", 0, config) == 1.0
    assert best_accuracy("hemorrhage", 1, SyntheticConfig()) == pytest.approx(1.0)


def test_no_planted_disparity_when_switched_off():
    rows = read(None, BuildSummary("synthetic"), seed=1, num_rows=400, shift_prob=0.0)
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
    assert truth["profile"] == "reducible" and truth["cue"] == "pattern"
    assert set(truth["domains"]) == set(DATASET_LABELS)
    assert truth["domains"]["chexpert"]["disadvantaged"] == ["age=a1", "age=a4"]
    assert truth["domains"]["ham10000"]["disadvantaged"] == ["age=a1", "age=a4", "sex=F"]
    assert truth["domains"]["covid_blues"]["disadvantaged"] == ["age=a1", "age=a4"]
    assert truth["shift_prob"] == config.shift_prob == 1.0
    custom_truth = planted_ground_truth(disadvantaged=("age=a4|sex=F",), domains=("chexpert", "covid_blues"))
    assert {d: v["disadvantaged"] for d, v in custom_truth["domains"].items()} == {
        "chexpert": ["sex=F|age=a4"],
        "covid_blues": [],
    }
    assert set(custom_truth["domains"]["covid_blues"]["best_accuracy"]) == {"age=a1", "age=a2", "age=a3", "age=a4"}


def test_profiles_set_their_defaults_and_explicit_values_win():
    assert SyntheticConfig(profile="noisy_shift").shift_prob == 0.35
    assert SyntheticConfig(profile="noisy_shift").cue == "ramp"
    assert SyntheticConfig(profile="noisy_shift", shift_prob=0.5).shift_prob == 0.5
    assert SyntheticConfig(cue="ramp").minority_noise_std == SyntheticConfig().noise_std


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
        ({"profile": "easy"}, ValueError, r"profile='easy'.*reducible.*noisy_shift"),
        ({"cue": "stripes"}, ValueError, r"cue='stripes'.*pattern.*ramp"),
        ({"cue_strength": 2.0}, ValueError, r"cue_strength"),
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
