"""The fairness log's fast paths give what the plain definitions give.

Answer extraction jumps between markers instead of scanning every character, label matching remembers
answers it has seen, and the metrics suite encodes each distinct label set and (reference, prediction)
pair once and scores several attributes from one encoding. These check each against its definition.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from fair_trl.labels import DATASET_LABELS
from fair_trl.metrics import compute_fairness, compute_fairness_by_attribute
from fair_trl.rewards import LabelMatcher, extract_answer, matcher_for
from fair_trl.rollout_fairness import Rollout, fairness_results


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"\boxed{MEL} and then \boxed{NV", "MEL"),  # a later box that never closes does not count
        (r"\boxed{a \boxed{b}}", "b"),  # the inner box starts last
        (r"\boxed {NV}", "NV"),
        (r"\boxed NV \boxed{MEL}", "MEL"),
        ("<answer>a<answer>b</answer>", "a<answer>b"),  # the tag pattern's own (leftmost) match
        ("<Answer>NV</ANSWER> and <answer>MEL</answer>", "MEL"),
        ("<an\u017fwer>NV</answer>", "NV"),  # a long s matches "s" ignoring case
        ("<answer>NV", None),
        ("< answer>NV</answer>", None),
        (r"\boxed{\text{NV}} then <answer> </answer>", ""),
    ],
)
def test_extract_answer_edges(text, answer):
    assert extract_answer(text) == answer


def slow_extract(text: str) -> str | None:
    """The definition: every closed \\boxed{} and every tag match, the one starting last."""
    import re

    candidates = [(m.start(), m.group(1)) for m in re.finditer(r"<answer>(.*?)</answer>", text, re.S | re.I)]
    for match in re.finditer(r"\\boxed\s*\{", text):
        depth = 1
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                candidates.append((match.start(), text[match.end() : i]))
                break
    if not candidates:
        return None
    answer = max(candidates)[1].strip()
    return re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", answer).strip()


def test_extract_answer_agrees_with_its_definition_on_random_markup():
    rng = random.Random(0)
    pieces = ["\\boxed{", "\\boxed ", "}", "{", "<answer>", "</answer>", "<ANSWER>", "<a", "\\text{", "NV", " "]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        assert extract_answer(text) == slow_extract(text), text


def test_label_matcher_remembers_answers_within_its_bound(monkeypatch):
    matcher = LabelMatcher(DATASET_LABELS["ham10000"])
    monkeypatch.setattr(LabelMatcher, "memo_size", 3)
    answers = ["Nevus", "melanoma and bcc", "banana", "NV", "Nevus", "mole", "MEL, NV"]
    first = [matcher.match(a) for a in answers]
    assert first == [matcher._match(a) for a in answers]
    assert len(matcher._memo) <= 3
    assert [matcher.match(a) for a in answers] == first


def random_samples(seed: int, n: int):
    rng = np.random.default_rng(seed)
    names = ["ham10000", "chexpert", "isic2020"]
    datasets = [str(d) for d in rng.choice(names, n)]
    references, predictions = [], []
    for d in datasets:
        labels = DATASET_LABELS[d]
        references.append(", ".join(rng.choice(labels, int(rng.integers(1, 3)), replace=False)))
        predictions.append(str(rng.choice([*labels, "unsure"])) if rng.random() < 0.9 else None)
    sex = [None if rng.random() < 0.2 else str(rng.choice(["F", "M"])) for _ in range(n)]
    age = [None if rng.random() < 0.2 else f"a{rng.integers(1, 5)}" for _ in range(n)]
    return predictions, references, datasets, {"sex": sex, "age": age}


def test_several_attributes_at_once_equal_one_call_each():
    predictions, references, datasets, groups = random_samples(0, 3000)
    classes = {d: DATASET_LABELS[d] for d in set(datasets)}
    together = compute_fairness_by_attribute(predictions, references, datasets, groups, classes, n_bootstrap=20)
    for attribute, values in groups.items():
        alone = compute_fairness(predictions, references, datasets, values, classes, n_bootstrap=20)
        assert together[attribute] == alone


def test_unhashable_label_sets_score_like_their_strings():
    predictions, references, datasets, groups = random_samples(1, 800)
    as_lists = [None if p is None else [p] for p in predictions]
    ref_lists = [[part.strip() for part in r.split(",")] for r in references]
    assert compute_fairness(as_lists, ref_lists, datasets, groups["age"]) == compute_fairness(
        predictions, references, datasets, groups["age"]
    )


def test_fairness_results_score_the_matched_labels_with_compute_fairness():
    predictions, references, datasets, groups = random_samples(2, 2000)
    answers = [p if p is None else p.lower() for p in predictions]  # spellings the matcher has to map
    rollouts = [
        Rollout(a, r, d, {"sex": s, "age": g})
        for a, r, d, s, g in zip(answers, references, datasets, groups["sex"], groups["age"], strict=True)
    ]
    results = fairness_results(rollouts, ["sex", "age", "site"])
    assert set(results) == {"sex", "age"}  # no rollout has a known site
    classes = {d: DATASET_LABELS[d] for d in set(datasets)}
    matched = [matcher_for(classes[d]).match(a) if a else frozenset() for a, d in zip(answers, datasets, strict=True)]
    truth = [matcher_for(classes[d]).match(r) for r, d in zip(references, datasets, strict=True)]
    for attribute in ("sex", "age"):
        assert results[attribute] == compute_fairness(matched, truth, datasets, groups[attribute], classes)
