"""The Appendix B.1 metrics: hand-computed cases, the paper's own tables, and fairlearn."""

import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

from fair_trl.metrics import SUMMARY_KEYS, compute_fairness, dataset_disparities, spread

# Two datasets; "derm" has groups F and M, "xray" only F; one derm sample has an unknown group.
PREDICTIONS = ["A", "A", "zzz", "A", "B", "B", "P", "P"]
REFERENCES = ["A", "B", "C", "A", "B", "A", "P", "N"]
DATASETS = ["derm"] * 6 + ["xray"] * 2
GROUPS = ["F", "F", "F", "M", "M", None, "F", "F"]
CLASSES = {"derm": ["A", "B", "C"], "xray": ["P", "N"]}


@pytest.fixture(scope="module")
def hand():
    return compute_fairness(PREDICTIONS, REFERENCES, DATASETS, GROUPS, CLASSES)


def test_per_group_values_by_hand(hand):
    # derm/F, one-vs-rest: A (TP1 FP1 TN1) acc 2/3 f1 2/3 tpr 1 fpr 1/2 fdr 1/2; B and C (FN1 TN2) acc 2/3, rest 0.
    f = hand["per_group"]["derm"]["F"]
    assert f["n"] == 3
    assert f["acc"] == pytest.approx(2 / 3)
    assert f["f1"] == pytest.approx(2 / 9)
    assert f["tpr"] == pytest.approx(1 / 3)
    assert f["fpr"] == pytest.approx(1 / 6)
    assert f["fdr"] == pytest.approx(1 / 6)
    # derm/M: A and B right (f1 1), C never present nor predicted: TN only, so f1 = tpr = 0 by the 0/0 rule.
    m = hand["per_group"]["derm"]["M"]
    assert (m["acc"], m["f1"], m["tpr"], m["fpr"], m["fdr"]) == pytest.approx((1, 2 / 3, 2 / 3, 0, 0))
    # xray/F: P (TP1 FP1) acc 1/2 f1 2/3 fpr 1 fdr 1/2; N (FN1 TN1) acc 1/2, the rest 0.
    x = hand["per_group"]["xray"]["F"]
    assert (x["acc"], x["f1"], x["tpr"], x["fpr"], x["fdr"]) == pytest.approx((1 / 2, 1 / 3, 1 / 2, 1 / 2, 1 / 4))
    assert set(hand["per_group"]["xray"]) == {"F"}
    assert hand["n_unknown_group"] == 1 and hand["n"] == 8


def test_top_level_by_hand(hand):
    # Eq. 5-6: derm = mean(2/3, 1), xray = 1/2; F1: derm = mean(2/9, 2/3), xray = 1/3.
    assert hand["acc"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert hand["f1"] == pytest.approx((4 / 9 + 1 / 3) / 2)
    # Group values average over the datasets where the group occurs: F over derm and xray, M over derm.
    assert hand["group_values"]["F"]["tpr"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert hand["group_values"]["M"]["datasets"] == 1
    assert hand["EOD"] == pytest.approx(2 / 3 - 5 / 12)
    assert hand["PP"] == pytest.approx(5 / 24)
    assert hand["FPR_diff"] == pytest.approx(1 / 3)
    assert hand["delta_acc"] == pytest.approx(1 - 7 / 12)
    assert hand["delta_f1"] == pytest.approx(2 / 3 - 5 / 18)
    assert hand["sigma_acc"] == pytest.approx((5 / 12) / math.sqrt(2))
    assert hand["sigma_f1"] == pytest.approx((2 / 3 - 5 / 18) / math.sqrt(2))
    assert hand["acc_es"] == pytest.approx(hand["acc"] / (1 + hand["sigma_acc"]))
    assert hand["f1_es"] == pytest.approx(hand["f1"] / (1 + hand["sigma_f1"]))
    for key in SUMMARY_KEYS:
        assert 0.0 <= hand[key] <= 1.0


def test_per_dataset_columns_by_hand(hand):
    derm = hand["per_dataset"]["derm"]
    assert derm["delta_acc"] == pytest.approx(1 / 3)
    assert derm["sigma_acc"] == pytest.approx((1 / 3) / math.sqrt(2))
    assert derm["delta_fpr"] == pytest.approx(1 / 6)
    assert derm["delta_tpr"] == pytest.approx(1 / 3)
    # One group: nothing to compare, so no disparity.
    assert all(v == 0.0 for v in hand["per_dataset"]["xray"].values())


def test_unknown_group_changes_nothing_but_its_count():
    without = compute_fairness(PREDICTIONS[:5] + PREDICTIONS[6:], REFERENCES[:5] + REFERENCES[6:],
                               DATASETS[:5] + DATASETS[6:], GROUPS[:5] + GROUPS[6:], CLASSES)  # fmt: skip
    full = compute_fairness(PREDICTIONS, REFERENCES, DATASETS, GROUPS, CLASSES)
    assert {k: full[k] for k in SUMMARY_KEYS} == {k: without[k] for k in SUMMARY_KEYS}
    assert full["n_unknown_group"] == 1 and without["n_unknown_group"] == 0


def test_multilabel_sets_and_strings_agree():
    refs = ["Edema, Pneumonia", {"Edema"}, ["Pneumonia"]]
    preds = [{"Pneumonia", "Edema"}, "Edema", "Edema"]
    result = compute_fairness(preds, refs, ["cx"] * 3, ["F", "F", "M"])
    assert result["classes"] == {"cx": ["Edema", "Pneumonia"]}
    # F: both samples exactly right on both classes.
    assert result["per_group"]["cx"]["F"]["f1"] == pytest.approx(1.0)
    # M: Edema FP, Pneumonia FN.
    assert result["per_group"]["cx"]["M"]["acc"] == pytest.approx(0.0)


def test_given_classes_count_classes_no_reference_uses():
    inferred = compute_fairness(["A"], ["A"], ["d"], ["F"])
    given = compute_fairness(["A"], ["A"], ["d"], ["F"], {"d": ["A", "B"]})
    assert inferred["f1"] == pytest.approx(1.0)
    # B is a class with no positives: its F1 is 0/0 -> 0, halving the class mean.
    assert given["f1"] == pytest.approx(0.5)


def test_bad_inputs_name_what_is_wrong():
    with pytest.raises(ValueError, match="same length"):
        compute_fairness(["A"], ["A", "B"], ["d", "d"], ["F", "F"])
    with pytest.raises(ValueError, match="'Z' is not a class of dataset 'd'"):
        compute_fairness(["A"], ["Z"], ["d"], ["F"], {"d": ["A", "B"]})
    with pytest.raises(ValueError, match=r"no label list for dataset\(s\) \['e'\]"):
        compute_fairness(["A", "A"], ["A", "A"], ["d", "e"], ["F", "F"], {"d": ["A"]})


def test_bootstrap_intervals_bracket_the_estimate_and_repeat_with_the_seed():
    rng = np.random.default_rng(0)
    n = 400
    refs = list(rng.choice(["A", "B"], n))
    preds = [r if rng.random() < 0.8 else "A" for r in refs]
    groups = list(rng.choice(["F", "M"], n))
    point = compute_fairness(preds, refs, ["d"] * n, groups, n_bootstrap=200, seed=1)
    again = compute_fairness(preds, refs, ["d"] * n, groups, n_bootstrap=200, seed=1)
    assert point["ci"] == again["ci"]
    for key in ("acc", "f1", "acc_es", "f1_es"):
        low, high = point["ci"][key]
        assert low <= point[key] <= high and high - low > 0
    # Ten times the data: a tighter interval.
    big = compute_fairness(preds * 10, refs * 10, ["d"] * n * 10, groups * 10, n_bootstrap=200, seed=1)
    assert np.diff(big["ci"]["f1"])[0] < np.diff(point["ci"]["f1"])[0]


# -- the paper's appendix tables ------------------------------------------------------------------

_NUMBER = re.compile(r"^\d?\.\d+$")


def appendix_blocks():
    """(table, attribute, dataset, per-group rows [acc f1 tpr fpr fdr], reported 7 sigma/Delta columns)."""
    text = (Path(__file__).parent / "data" / "appendix_tables.txt").read_text()
    blocks, table, attribute = [], None, None
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("Table"):
            table = line.split()[1]
            continue
        if line.endswith("Groups"):
            attribute = line.split()[0]
            continue
        tokens = line.split()
        numbers = [float(t) for t in tokens if _NUMBER.match(t)]
        if len(numbers) == 12:
            dataset = tokens[0]
            blocks.append((table, attribute, dataset, [numbers[:5]], numbers[5:]))
        else:
            assert len(numbers) == 5, line
            blocks[-1][3].append(numbers)
    return blocks


BLOCKS = appendix_blocks()


def test_appendix_file_covers_three_tables_both_attributes():
    assert {b[0] for b in BLOCKS} == {"7", "13", "17"}
    assert len(BLOCKS) == 3 * 11
    assert {b[1] for b in BLOCKS} == {"Age", "Gender"}


@pytest.mark.parametrize("block", BLOCKS, ids=[f"T{b[0]}-{b[1]}-{b[2]}" for b in BLOCKS])
def test_appendix_sigma_and_delta_columns_recomputed_from_group_columns(block):
    _, _, _, rows, reported = block
    groups = {i: dict(zip(("acc", "f1", "tpr", "fpr", "fdr"), row, strict=True)) for i, row in enumerate(rows)}
    ours = dataset_disparities(groups)
    order = ("sigma_acc", "sigma_f1", "sigma_tpr", "delta_acc", "delta_f1", "delta_tpr", "delta_fpr")
    # The table's group columns are rounded to 3 decimals, so recomputed columns agree to about 2e-3.
    for key, value in zip(order, reported, strict=True):
        assert ours[key] == pytest.approx(value, abs=2e-3), key


def test_appendix_tables_use_the_sample_std_not_eq11s_population_std():
    # Eq. 11 prints 1/|G|, but the published sigma columns are the n - 1 standard deviation.
    population_misses = 0
    for _, _, _, rows, reported in BLOCKS:
        accs = [row[0] for row in rows]
        if abs(statistics.pstdev(accs) - reported[0]) > 2e-3:
            population_misses += 1
    assert population_misses > len(BLOCKS) // 2


def test_facts_example_ham10000_age_accuracy():
    sigma, delta = spread([0.933, 0.938, 0.800, 0.710])
    assert sigma == pytest.approx(0.110, abs=1e-3) and delta == pytest.approx(0.228, abs=1e-3)


# -- fairlearn, on a binary task where the definitions coincide --------------------------------------


def binary_sample(n=300, seed=3):
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n, p=[0.3, 0.7])
    truth = rng.random(n) < 0.3
    flip = rng.random(n) < np.where(sex == "F", 0.35, 0.15)
    predicted = truth ^ flip
    label = np.array(["Benign", "Malignant"])
    return label[predicted.astype(int)], label[truth.astype(int)], sex


def test_one_class_scores_match_fairlearn_metricframe():
    from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    preds, refs, sex = binary_sample()
    # One class scored one-vs-rest is the plain binary task; a benign reference names no class.
    positives = [r if r == "Malignant" else None for r in refs]
    ours = compute_fairness(list(preds), positives, ["isic2020"] * len(refs), list(sex), {"isic2020": ["Malignant"]})
    y_true, y_pred = refs == "Malignant", preds == "Malignant"
    frame = MetricFrame(
        metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "acc": accuracy_score},
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=sex,
    )
    for group in ("F", "M"):
        for metric in ("tpr", "fpr", "acc"):
            assert ours["per_group"]["isic2020"][group][metric] == pytest.approx(frame.by_group.loc[group, metric])
    differences = frame.difference(method="between_groups")
    assert ours["EOD"] == pytest.approx(differences["tpr"])
    assert ours["FPR_diff"] == pytest.approx(differences["fpr"])


def test_two_class_scores_are_the_mean_of_fairlearn_one_vs_rest_recalls():
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import recall_score

    preds, refs, sex = binary_sample(seed=4)
    ours = compute_fairness(list(preds), list(refs), ["isic2020"] * len(refs), list(sex))
    recalls = [
        MetricFrame(
            metrics=lambda t, p, c=c: recall_score(t, p, pos_label=c, zero_division=0),
            y_true=refs,
            y_pred=preds,
            sensitive_features=sex,
        ).by_group
        for c in ("Benign", "Malignant")
    ]
    for group in ("F", "M"):
        expected = (recalls[0][group] + recalls[1][group]) / 2
        assert ours["per_group"]["isic2020"][group]["tpr"] == pytest.approx(expected)
