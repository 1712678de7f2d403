"""The one multimodal row schema every builder writes, and the pieces builders share.

A row is what `FairGRPOTrainer` and TRL's VLM path read:

* ``prompt``: a one-turn conversation whose user content is an image placeholder followed by the
  question, the candidate labels and the authors' instruction (think in <think>, answer in \\boxed{}).
* ``image``: decoded lazily by `datasets` from a file path (or PNG bytes for DICOM/video frames).
* ``solution``: the canonical label (fair_trl.labels); multi-label answers comma-joined.
* ``dataset``: the registry name (``chexpert``, ``ham10000``, ...), the FairGRPO domain.
* ``patient_id``: splits never put one patient in both train and test.
* ``age`` (int years or None) and ``sex`` ("F", "M" or None): None means unknown.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Features, Image, Value

from fair_trl.groups import InvalidDemographic, parse_age, parse_sex
from fair_trl.labels import DATASET_LABELS, MULTI_LABEL_DATASETS

__all__ = [
    "FEATURES",
    "INSTRUCTION",
    "MULTI_IMAGE_FEATURES",
    "BuildSummary",
    "make_prompt",
    "png_bytes",
    "schema_age",
    "schema_sex",
    "split_by_patient",
]

INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)

_PROMPT_FEATURE = [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}]
_COMMON = {
    "solution": Value("string"),
    "dataset": Value("string"),
    "patient_id": Value("string"),
    "age": Value("int32"),
    "sex": Value("string"),
}
FEATURES = Features({"prompt": _PROMPT_FEATURE, "image": Image(), **_COMMON})
MULTI_IMAGE_FEATURES = Features({"prompt": _PROMPT_FEATURE, "images": [Image()], **_COMMON})

_QUESTIONS = {
    "chexpert": "Which findings are present in this chest radiograph?",
    "ham10000": "What is the diagnosis of the skin lesion in this dermoscopic image?",
    "isic2020": "Is the skin lesion in this dermoscopic image malignant or benign?",
    "pad_ufes20": "What is the diagnosis of the skin lesion in this clinical image?",
    "vindr_mammo": "What is the BI-RADS assessment of this mammogram?",
    "hemorrhage": "Does this head CT slice show an intracranial hemorrhage?",
    "covid_blues": "Does this lung ultrasound frame indicate COVID?",
}


def make_prompt(dataset: str, num_images: int = 1, question: str | None = None) -> list[dict[str, Any]]:
    """The conversational prompt for one row of `dataset`, listing its candidate labels.

    A known dataset gets its question (or `question`), its candidate labels and the instruction; the
    instruction is not repeated when `question` already contains it. A dataset outside the registry
    (e.g. from the authors' jsonl files) needs `question`, which is used verbatim, followed by the
    instruction unless it already contains it.
    """
    content: list[dict[str, Any]] = [{"type": "image", "text": None} for _ in range(num_images)]
    if dataset not in DATASET_LABELS:
        if not question:
            raise ValueError(
                f"make_prompt: dataset {dataset!r} is not one of {sorted(DATASET_LABELS)}, so it needs a question"
            )
        text = question if INSTRUCTION in question else f"{question} {INSTRUCTION}"
    else:
        labels = DATASET_LABELS[dataset]
        question = question or _QUESTIONS[dataset]
        if dataset in MULTI_LABEL_DATASETS:
            choose = f"Choose one or more of: {', '.join(labels)}. Separate several findings with commas."
        else:
            choose = f"Choose one of: {', '.join(labels)}."
        text = f"{question} {choose}" if INSTRUCTION in question else f"{question} {choose} {INSTRUCTION}"
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


@dataclass
class BuildSummary:
    """What a build kept, skipped and could not read; printed by `fair-trl build-dataset`."""

    dataset: str
    rows: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    patients: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    missing: Counter = field(default_factory=Counter)
    invalid: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "rows": self.rows,
            "splits": dict(self.splits),
            "patients": dict(self.patients),
            "skipped": dict(self.skipped),
            "missing": dict(self.missing),
            "invalid": dict(self.invalid),
            "labels": dict(sorted(self.labels.items())),
        }

    def __str__(self) -> str:
        lines = [f"{self.dataset}: {self.rows} rows " + ", ".join(f"{k} {v}" for k, v in self.splits.items())]
        for title, counts in (("skipped", self.skipped), ("missing", self.missing), ("invalid", self.invalid)):
            if counts:
                lines.append(f"  {title}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if self.labels:
            lines.append("  labels: " + ", ".join(f"{k} {v}" for k, v in sorted(self.labels.items())))
        return "\n".join(lines)


def schema_age(value: Any, summary: BuildSummary, column: str = "age") -> int | None:
    """A release's age value as whole years, or None (counted in the summary as missing or invalid).

    Ages under one year become 1, because 0 is the releases' placeholder for "not recorded".
    """
    try:
        age = parse_age(value)
    except InvalidDemographic:
        summary.invalid[column] += 1
        return None
    if age is None:
        summary.missing[column] += 1
        return None
    return max(1, math.floor(age))


def schema_sex(value: Any, summary: BuildSummary, column: str = "sex") -> str | None:
    """A release's sex/gender value as "F"/"M", or None (counted in the summary as missing or invalid)."""
    try:
        sex = parse_sex(value)
    except InvalidDemographic:
        summary.invalid[column] += 1
        return None
    if sex is None:
        summary.missing[column] += 1
    return sex


def split_by_patient(patient_ids: Sequence[str], test_size: float = 0.2, seed: int = 0) -> list[str]:
    """ "train"/"test" per row, with every patient wholly on one side.

    Patients (not rows) are shuffled with `seed` and the first round(test_size * patients) go to test,
    so the split depends only on the set of patient ids and the seed, not on row order.
    """
    if not 0.0 <= test_size < 1.0:
        raise ValueError(f"test_size must be in [0, 1), got {test_size}")
    patients = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(patients))
    num_test = round(test_size * len(patients))
    if test_size > 0 and num_test == 0 and len(patients) > 1:
        num_test = 1
    test = {patients[i] for i in order[:num_test]}
    return ["test" if pid in test else "train" for pid in patient_ids]


def png_bytes(pixels: np.ndarray | Iterable) -> dict[str, Any]:
    """An `Image()` feature value holding `pixels` (H x W or H x W x 3, any numeric dtype) as 8-bit PNG."""
    from PIL import Image as PILImage

    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        low, high = np.nanmin(array), np.nanmax(array)
        scale = 255.0 / (high - low) if high > low else 0.0
        # Rounded, not truncated: float error would otherwise map the maximum to 254.
        array = np.clip(np.rint((array - low) * scale), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}
