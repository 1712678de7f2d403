"""Clinical datasets in one multimodal schema (see `fair_trl.data.schema`).

`build_dataset(name, data_dir, **options)` reads a public release from its on-disk layout (or
generates the synthetic benchmark) and returns a `datasets.DatasetDict` with ``train`` and ``test``
split by patient. Each builder module has one reader, ``read(data_dir, summary, **options)``, that
returns schema rows without prompts; the shared code here adds prompts, splits and features.
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from fair_trl.data.schema import FEATURES, MULTI_IMAGE_FEATURES, BuildSummary, make_prompt, split_by_patient

__all__ = ["BUILDERS", "BuildSummary", "build_dataset", "rows_to_dataset_dict"]

# name -> module under fair_trl.data holding its `read` function (imported on first use).
BUILDERS: dict[str, str] = {
    "chexpert": "chexpert",
    "ham10000": "ham10000",
    "isic2020": "isic2020",
    "pad_ufes20": "pad_ufes20",
    "vindr_mammo": "vindr_mammo",
    "hemorrhage": "hemorrhage",
    "covid_blues": "covid_blues",
    "climb_jsonl": "climb_jsonl",
    "synthetic": "synthetic",
}


def build_dataset(
    name: str,
    data_dir: str | Path | None,
    *,
    test_size: float = 0.2,
    seed: int = 0,
    return_summary: bool = False,
    progress: bool = False,
    **options: Any,
) -> DatasetDict | tuple[DatasetDict, BuildSummary]:
    """Build `name` from `data_dir` as a DatasetDict with patient-disjoint ``train``/``test`` splits.

    `progress` shows a progress bar while reading. `options` go to the builder (e.g.
    ``uncertain="negative"`` for CheXpert). With ``return_summary=True`` the build summary (rows kept,
    skipped, missing/invalid metadata) comes too.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
    module = importlib.import_module(f"fair_trl.data.{BUILDERS[name]}")
    summary = BuildSummary(dataset=name)
    root = Path(data_dir) if data_dir is not None else None
    rows = module.read(root, summary, seed=seed, progress=progress, **options)
    if not rows:
        raise ValueError(f"{name}: no usable rows found under {data_dir}")
    dataset_dict = rows_to_dataset_dict(rows, summary, test_size=test_size, seed=seed)
    return (dataset_dict, summary) if return_summary else dataset_dict


def rows_to_dataset_dict(
    rows: list[dict[str, Any]], summary: BuildSummary, *, test_size: float = 0.2, seed: int = 0
) -> DatasetDict:
    """Schema rows (no prompt yet) -> DatasetDict split by patient; fills the summary's counts."""
    multi = any("images" in row for row in rows)
    features = MULTI_IMAGE_FEATURES if multi else FEATURES
    columns: dict[str, list[Any]] = {name: [] for name in features}
    for row in rows:
        images = row["images"] if "images" in row else [row["image"]]
        columns["prompt"].append(make_prompt(row["dataset"], len(images), row.get("question")))
        if multi:
            columns["images"].append(images)
        else:
            columns["image"].append(images[0])
        for name in ("solution", "dataset", "patient_id", "age", "sex"):
            columns[name].append(row[name])
    sides = split_by_patient(columns["patient_id"], test_size=test_size, seed=seed)
    summary.rows = len(rows)
    summary.labels = Counter(label for row in rows for label in row["solution"].split(", "))
    splits = {}
    for side in ("train", "test"):
        keep = [i for i, s in enumerate(sides) if s == side]
        splits[side] = Dataset.from_dict({k: [v[i] for i in keep] for k, v in columns.items()}, features=features)
        summary.splits[side] = len(keep)
        summary.patients[side] = len({columns["patient_id"][i] for i in keep})
    return DatasetDict(splits)
