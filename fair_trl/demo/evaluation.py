"""Greedy answers to every held-out prompt, scored with the fairness suite and by planted group.

The answers are read the way the RL reward reads them (`fair_trl.rewards.parse_prediction` on the final
``\\boxed{}``, nothing else counts), then scored per demographic attribute with `compute_fairness`.
Besides the suite's metrics a checkpoint keeps each group's exact-match accuracy, the share of answers
in the format, and how many distinct answers the policy gives (a policy collapsed onto a few constant
answers gives only a handful).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fair_trl.groups import normalise_attribute
from fair_trl.labels import canonical_labels
from fair_trl.metrics import SUMMARY_KEYS, compute_fairness, to_label_set
from fair_trl.rewards import extract_answer, parse_prediction

__all__ = ["ATTRIBUTES", "Evaluator", "attribute_group", "compact"]

ATTRIBUTES = ("age", "sex")


def attribute_group(attribute: str, row: dict[str, Any]) -> str | None:
    """The row's group for one attribute (age bin "a1".."a4" or sex "F"/"M"), None when unknown."""
    return normalise_attribute(attribute, row.get(attribute))


def compact(fairness: dict[str, Any]) -> dict[str, Any]:
    """The parts of a `compute_fairness` result the report uses, as JSON-ready values."""
    return {
        **{key: float(fairness[key]) for key in SUMMARY_KEYS},
        "group_f1": {str(g): v["f1"] for g, v in fairness["group_values"].items()},
        "per_group_f1": {
            name: {str(g): s["f1"] for g, s in groups.items()} for name, groups in fairness["per_group"].items()
        },
    }


class Evaluator:
    """Scores a model on fixed rows; the processed inputs are built once and reused at every checkpoint.

    `planted`: per row "planted" or "other" by its released demographics, None where they are hidden.

    Rows are batched by prompt length (each domain has its own prompt text), so a batch carries little
    left padding and its answers, all of one domain's kind, tend to end together; answers come back in
    the rows' order.
    """

    def __init__(self, processor, rows: list[dict[str, Any]], planted: list[str | None], max_new_tokens: int,
                 batch_size: int = 256):  # fmt: skip
        self.processor = processor
        self.rows = rows
        self.planted = planted
        self.max_new_tokens = max_new_tokens
        processor.tokenizer.padding_side = "left"
        texts = [processor.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
        # By length in characters: rows with one prompt text batch together, in their own order.
        self.order = sorted(range(len(rows)), key=lambda i: len(texts[i]))
        self.batches = []
        for start in range(0, len(rows), batch_size):
            chunk = self.order[start : start + batch_size]
            self.batches.append(
                processor(
                    text=[texts[i] for i in chunk],
                    images=[[rows[i]["image"]] for i in chunk],
                    padding=True,
                    return_tensors="pt",
                )
            )
        self.references = [to_label_set(r["solution"]) for r in rows]
        self.datasets = [r["dataset"] for r in rows]
        self.classes = {name: canonical_labels(name) for name in set(self.datasets)}
        self.groups = {a: [attribute_group(a, r) for r in rows] for a in ATTRIBUTES}

    def answers(self, model) -> list[str]:
        """The greedy answer to every row, in the rows' order."""
        import torch

        was_training = model.training
        model.eval()
        in_batch_order: list[str] = []
        with torch.no_grad():
            for inputs in self.batches:
                generated = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
                new_tokens = generated[:, inputs["input_ids"].shape[1] :]
                in_batch_order += self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        model.train(was_training)
        out = [""] * len(in_batch_order)
        for row, answer in zip(self.order, in_batch_order, strict=True):
            out[row] = answer
        return out

    def evaluate(self, model) -> dict[str, Any]:
        answers = self.answers(model)
        predictions = [
            parse_prediction(a, labels=self.classes[d], require_markup=True)
            for a, d in zip(answers, self.datasets, strict=True)
        ]
        correct = [p == r for p, r in zip(predictions, self.references, strict=True)]
        result: dict[str, Any] = {
            "exact": sum(correct) / len(correct),
            "boxed": sum(extract_answer(a) is not None for a in answers) / len(answers),
            "distinct_answers": len({(d, tuple(sorted(p))) for d, p in zip(self.datasets, predictions, strict=True)}),
            "planted_exact": _exact_by(self.planted, correct),
        }
        for attribute in ATTRIBUTES:
            groups = self.groups[attribute]
            fairness = compute_fairness(predictions, self.references, self.datasets, groups, self.classes)
            result[attribute] = {**compact(fairness), "group_exact": _exact_by(groups, correct)}
        return result


def _exact_by(keys: list[str | None], correct: list[bool]) -> dict[str, float]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key, ok in zip(keys, correct, strict=True):
        if key is not None:
            counts[key][0] += ok
            counts[key][1] += 1
    return {key: hits / n for key, (hits, n) in sorted(counts.items())}
