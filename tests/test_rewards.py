"""Answer extraction, label matching and the TRL reward functions."""

import pytest

from fair_trl.rewards import (
    AccuracyReward,
    LabelMatcher,
    extract_answer,
    format_reward,
    parse_prediction,
    split_labels,
)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"<think>mole-like</think> The answer is \boxed{NV}.", "NV"),
        (r"\boxed{MEL} on second thought \boxed{ NV }", "NV"),
        (r"\boxed{MEL} then <answer>BCC</answer>", "BCC"),
        (r"<answer>BCC</answer> so \boxed{MEL}", "MEL"),
        (r"\boxed{\text{Pleural Effusion}}", "Pleural Effusion"),
        (r"\boxed{a {nested} b}", "a {nested} b"),
        ("<ANSWER>\nNV\n</ANSWER>", "NV"),
        ("no markup at all", None),
        (r"\boxed{unclosed", None),
    ],
)
def test_extract_answer_takes_the_last_boxed_or_answer_tag(text, answer):
    assert extract_answer(text) == answer


def test_split_labels_on_comma_semicolon_and_ampersand():
    assert split_labels("Edema, Pneumonia and Atelectasis & Fracture; No Finding") == [
        "Edema",
        "Pneumonia",
        "Atelectasis",
        "Fracture",
        "No Finding",
    ]
    # "and" only as a word: "Cardiomegaly" and "Standard" stay whole.
    assert split_labels("Standard") == ["Standard"]


@pytest.mark.parametrize(
    ("text", "dataset", "labels"),
    [
        (r"\boxed{Nevus}", "ham10000", {"NV"}),
        (r"\boxed{melanoma and basal cell carcinoma}", "ham10000", {"MEL", "BCC"}),
        (r"\boxed{seborrheic keratosis}", "ham10000", {"OTHER"}),
        (r"\boxed{BI-RADS 2}", "vindr_mammo", {"BI-RADS 2"}),
        (r"\boxed{2}", "vindr_mammo", {"BI-RADS 2"}),
        (r"\boxed{birads 4}", "VinDr", {"BI-RADS 4"}),
        (r"\boxed{pleural effusion, EDEMA}", "chexpert", {"Pleural Effusion", "Edema"}),
        (r"\boxed{No Hemorrhage}", "hemorrhage", {"No Hemorrhage"}),
        (r"\boxed{hemorrhage}", "hemorrhage", {"Has Hemorrhage"}),
        (r"\boxed{COVID-19}", "covid_blues", {"Has COVID"}),
        (r"\boxed{banana}", "ham10000", set()),
        ("NV", "PAD-UFES-20", {"NV"}),
    ],
)
def test_parse_prediction_maps_synonyms_case_insensitively(text, dataset, labels):
    assert parse_prediction(text, dataset) == labels


def test_parse_prediction_needs_markup_when_asked():
    assert parse_prediction("NV", "ham10000") == {"NV"}
    assert parse_prediction("NV", "ham10000", require_markup=True) == set()


def test_matcher_for_an_unknown_dataset_uses_the_labels_given():
    matcher = LabelMatcher(["Glaucoma", "Healthy"])
    assert matcher.match("glaucoma") == {"Glaucoma"}
    assert matcher.match("Nevus") == set()


def chat(text):
    return [{"role": "assistant", "content": text}]


def test_accuracy_reward_scores_label_sets_and_counts_answers_naming_no_label():
    reward = AccuracyReward()
    logged = []
    completions = [
        chat(r"<think>x</think>\boxed{nevus}"),
        chat(r"\boxed{Pneumonia, Edema}"),
        chat(r"\boxed{Edema}"),
        chat(r"\boxed{banana}"),
        chat("NV"),
        r"\boxed{2}",
    ]
    solution = ["NV", "Edema, Pneumonia", "Edema, Pneumonia", "NV", "NV", "BI-RADS 2"]
    dataset = ["ham10000", "chexpert", "chexpert", "ham10000", "ham10000", "vindr_mammo"]
    rewards = reward(completions, solution=solution, dataset=dataset, log_metric=lambda k, v: logged.append((k, v)))
    assert rewards == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert reward.no_valid_label == 2 and reward.scored == 6
    assert logged == [("accuracy/no_valid_label_frac", pytest.approx(2 / 6))]
    assert reward.__name__ == "accuracy_reward"


def test_accuracy_reward_without_a_dataset_column_matches_the_reference_itself():
    reward = AccuracyReward()
    assert reward([chat(r"\boxed{glaucoma}"), chat(r"\boxed{healthy}")], solution=["Glaucoma", "Glaucoma"]) == [
        1.0,
        0.0,
    ]


def test_accuracy_reward_with_explicit_label_sets():
    reward = AccuracyReward(labels={"eye": ["Glaucoma", "Healthy"]})
    assert reward([chat(r"\boxed{Healthy}")], solution=["Healthy"], dataset=["eye"]) == [1.0]
    assert reward([chat(r"\boxed{Cataract}")], solution=["Healthy"], dataset=["eye"]) == [0.0]
    assert reward.no_valid_label == 1


def test_format_reward_wants_think_then_boxed():
    completions = [
        chat(r"<think>a lesion</think> \boxed{NV}"),
        chat(r"\boxed{NV}"),
        chat(r"<think>a lesion</think> NV"),
        chat(r"<think></think>\boxed{NV}"),
        [{"role": "assistant", "content": [{"type": "text", "text": r"<think>x</think>\boxed{NV}"}]}],
    ]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 1.0]
