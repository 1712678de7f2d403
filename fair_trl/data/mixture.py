"""A training mixture of several schema datasets (the paper trains on all seven at once).

`make_mixture` concatenates schema datasets (built by `build_dataset`, loaded with `load_split` or
from the Hub), optionally caps how many rows each dataset contributes, and shuffles the result.

Choices:
* Caps apply per value of the ``dataset`` column (the FairGRPO domain), not per part, so a part that
  holds several datasets (e.g. the authors' jsonl) is capped per dataset too. A capped dataset keeps a
  uniform random subset of its rows, drawn with `seed`.
* Only the schema columns are kept (``prompt``, ``image`` or ``images``, ``solution``, ``dataset``,
  ``patient_id``, ``age``, ``sex``); every part is cast to the schema features. When some parts have
  ``image`` and others ``images``, the single images become one-element ``images`` lists (the image
  bytes/paths are carried over without decoding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from datasets import Dataset, DatasetDict, Image, concatenate_datasets

from fair_trl.data.schema import FEATURES, MULTI_IMAGE_FEATURES

__all__ = ["SCHEMA_COLUMNS", "make_mixture"]

SCHEMA_COLUMNS = ("prompt", "solution", "dataset", "patient_id", "age", "sex")

Part = Dataset | DatasetDict


def _named_parts(parts: Mapping[str, Part] | Sequence[Part], split: str) -> list[tuple[str, Dataset]]:
    if isinstance(parts, Dataset | DatasetDict):
        raise TypeError("make_mixture: pass a mapping name -> dataset or a list of datasets, not a single dataset")
    items = list(parts.items()) if isinstance(parts, Mapping) else [(f"part {i}", p) for i, p in enumerate(parts)]
    if not items:
        raise ValueError("make_mixture: no parts given")
    named = []
    for name, part in items:
        if isinstance(part, DatasetDict):
            if split not in part:
                raise ValueError(f"make_mixture: {name} has no split {split!r}; available splits: {sorted(part)}")
            part = part[split]
        if not isinstance(part, Dataset):
            raise TypeError(f"make_mixture: {name} is a {type(part).__name__}, expected a Dataset or DatasetDict")
        named.append((str(name), part))
    return named


def _check_columns(name: str, part: Dataset) -> None:
    columns = part.column_names
    missing = [c for c in SCHEMA_COLUMNS if c not in columns]
    if "image" not in columns and "images" not in columns:
        missing.append("image or images")
    if missing:
        raise ValueError(f"make_mixture: {name} lacks schema column(s) {missing}; its columns are {columns}")


def _as_multi_image(part: Dataset) -> Dataset:
    """An ``image`` part as ``images`` one-element lists, without decoding the images."""
    part = part.cast_column("image", Image(decode=False))
    features = MULTI_IMAGE_FEATURES.copy()
    features["images"] = [Image(decode=False)]
    part = part.map(
        lambda batch: {"images": [[image] for image in batch["image"]]},
        batched=True,
        remove_columns=["image"],
        features=features,
    )
    return part.cast_column("images", [Image()])


def make_mixture(
    parts: Mapping[str, Part] | Sequence[Part],
    caps: int | Mapping[str, int] | None = None,
    seed: int = 0,
    split: str = "train",
) -> Dataset:
    """Concatenate schema datasets, cap rows per ``dataset`` value, and shuffle (all seeded by `seed`).

    `parts`: a mapping name -> Dataset/DatasetDict (a DatasetDict contributes its `split`) or a list of
    them. `caps`: one int for every dataset, or a mapping dataset name -> int (names not mentioned are
    not capped; a name that occurs in no part raises).
    """
    named = _named_parts(parts, split)
    for name, part in named:
        _check_columns(name, part)
    multi = any("images" in part.column_names for _, part in named)
    features = MULTI_IMAGE_FEATURES if multi else FEATURES
    aligned = []
    for _name, part in named:
        image_column = "images" if "images" in part.column_names else "image"
        part = part.select_columns([*SCHEMA_COLUMNS, image_column])
        if multi and image_column == "image":
            part = _as_multi_image(part)
        part = part.select_columns(list(features))
        aligned.append(part if part.features == features else part.cast(features))
    mixture = concatenate_datasets(aligned)

    rng = np.random.default_rng(seed)
    if caps is not None:
        names = np.asarray(mixture["dataset"], dtype=object)
        present = sorted(set(names.tolist()))
        if isinstance(caps, Mapping):
            unknown = sorted(set(caps) - set(present))
            if unknown:
                raise ValueError(f"make_mixture: caps name dataset(s) {unknown} that no part holds; present: {present}")
            limits = dict(caps)
        else:
            limits = dict.fromkeys(present, caps)
        for name, cap in limits.items():
            if isinstance(cap, bool) or not isinstance(cap, int | np.integer) or cap < 0:
                raise ValueError(f"make_mixture: cap for {name!r} must be a non-negative int, got {cap!r}")
        keep = []
        for name in present:
            rows = np.flatnonzero(names == name)
            cap = limits.get(name)
            if cap is not None and len(rows) > cap:
                rows = np.sort(rng.choice(rows, size=int(cap), replace=False))
            keep.append(rows)
        mixture = mixture.select(np.sort(np.concatenate(keep)).tolist())
    if len(mixture) == 0:
        raise ValueError("make_mixture: the mixture is empty")
    order = rng.permutation(len(mixture))
    return mixture.select(order.tolist()).flatten_indices()
