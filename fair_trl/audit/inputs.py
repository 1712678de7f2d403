"""The rows an audit answers: which dataset, which columns it needs, and each row's prompt and image.

`--dataset` is ``synthetic`` (the generated benchmark, with `build_dataset` options), a folder written by
``fair-trl build-dataset`` (any ``save_to_disk`` output) or a Hub dataset / local data-file folder in the
project's schema. A row's image is decoded here, one row at a time, so one undecodable file is counted
and reported instead of stopping the audit.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fair_trl.groups import column_names

__all__ = ["SYNTHETIC", "AuditRows", "decode_image", "load_rows", "prepare_rows"]

SYNTHETIC = "synthetic"
PROMPT_COLUMN = "prompt"
SOLUTION_COLUMN = "solution"
DOMAIN_COLUMN = "dataset"
IMAGE_COLUMNS = ("image", "images")


def _load(source: str, split: str, options: Mapping[str, Any]) -> Any:
    if source == SYNTHETIC:
        from fair_trl.data import build_dataset

        try:
            data = build_dataset(SYNTHETIC, None, **options)
        except TypeError as err:  # an unknown or mistyped option: the builder names the valid ones
            raise ValueError(f"--dataset-option: {err}") from None
        if split not in data:
            raise ValueError(f"synthetic has no split {split!r}; available splits: {sorted(data)}")
        return data[split]
    if options:
        raise ValueError(f"--dataset-option only applies to --dataset synthetic, not {source!r}: got {dict(options)}")
    from fair_trl.data.loading import load_split

    return load_split(source, split)


def decode_image(value: Any) -> Any:
    """A PIL image (RGB) from a `datasets` image value read without decoding: {"bytes", "path"}, or a PIL image."""
    from PIL import Image

    if value is None:
        raise ValueError("the row has no image")
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, Mapping) and (value.get("bytes") or value.get("path")):
        image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    else:
        raise ValueError(f"not an image: {type(value).__name__}")
    image.load()  # decode now: PIL opens lazily, and a truncated file only fails here
    return image.convert("RGB")


@dataclass
class AuditRows:
    """A split checked for what the audit needs, with images left undecoded until their row is answered."""

    dataset: Any
    source: str
    split: str
    attributes: tuple[str, ...]
    image_column: str | None
    id_column: str | None
    domain_column: str | None

    def __len__(self) -> int:
        return len(self.dataset)

    def row_id(self, index: int, row: Mapping[str, Any]) -> str:
        return str(row[self.id_column]) if self.id_column else str(index)

    def ids(self) -> list[str]:
        if self.id_column:
            return [str(v) for v in self.dataset[self.id_column]]
        return [str(i) for i in range(len(self.dataset))]

    def domain(self, row: Mapping[str, Any]) -> str:
        if self.domain_column:
            value = row.get(self.domain_column)
            if value is not None and str(value).strip():
                return str(value).strip()
        return Path(self.source).name or self.source

    def record(self, index: int, row: Mapping[str, Any]) -> dict[str, Any]:
        """The fields a predictions line carries besides the answer: what `fair-trl evaluate` reads."""
        out = {"id": self.row_id(index, row), "dataset": self.domain(row), "reference": row[SOLUTION_COLUMN]}
        out.update({a: row.get(a) for a in self.attributes})
        return out

    def images(self, row: Mapping[str, Any]) -> list[Any]:
        """The row's decoded images; raises ValueError (with the reason) when one does not decode."""
        if self.image_column is None:
            return []
        value = row.get(self.image_column)
        values = value if self.image_column == "images" else [value]
        if not values:
            raise ValueError("the row has no image")
        try:
            return [decode_image(v) for v in values]
        except ValueError:
            raise
        except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
            raise ValueError(f"{type(err).__name__}: {err}") from None

    def batches(self, indices: Sequence[int], size: int):
        """(index, row) lists of at most `size` rows, in `indices` order."""
        for start in range(0, len(indices), size):
            chunk = list(indices[start : start + size])
            rows = self.dataset.select(chunk)
            yield list(zip(chunk, rows, strict=True))


def load_rows(
    source: str,
    split: str = "test",
    attributes: Sequence[str] = ("age", "sex"),
    options: Mapping[str, Any] | None = None,
    id_column: str | None = None,
) -> AuditRows:
    """One split of `source`, checked: the columns it lacks are named in the error, with the ones it has."""
    return prepare_rows(_load(source, split, dict(options or {})), source, split, attributes, id_column)


def prepare_rows(
    dataset: Any,
    source: str,
    split: str = "test",
    attributes: Sequence[str] = ("age", "sex"),
    id_column: str | None = None,
) -> AuditRows:
    """A loaded `datasets.Dataset` checked for what the audit needs (`source` and `split` name it in errors)."""
    from datasets import Image
    from datasets import Sequence as SequenceFeature

    columns = list(dataset.column_names)
    attributes = column_names(attributes)
    needed = [PROMPT_COLUMN, SOLUTION_COLUMN, *attributes] + ([id_column] if id_column else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        demographic = [c for c in missing if c in attributes]
        hint = f" (demographic columns from --attributes: {list(attributes)})" if demographic else ""
        raise ValueError(
            f"{source} (split {split!r}) has no column(s) {missing}{hint}; fair-trl audit needs "
            f"{[PROMPT_COLUMN, SOLUTION_COLUMN]} and the demographic columns. Its columns are {columns}"
        )
    if id_column:
        ids = [str(v) for v in dataset[id_column]]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"--id-column {id_column!r} is not unique in {source}: {duplicate!r} repeats")
    image_column = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image_column is not None:
        # Undecoded until the row is answered, so a bad file is that row's problem, not the whole batch's.
        feature = dataset.features[image_column]
        if isinstance(feature, Image):
            dataset = dataset.cast_column(image_column, Image(decode=False))
        elif isinstance(feature, list) and feature and isinstance(feature[0], Image):
            dataset = dataset.cast_column(image_column, [Image(decode=False)])
        elif isinstance(feature, SequenceFeature) and isinstance(feature.feature, Image):
            dataset = dataset.cast_column(image_column, SequenceFeature(Image(decode=False)))
    return AuditRows(
        dataset=dataset,
        source=source,
        split=split,
        attributes=tuple(attributes),
        image_column=image_column,
        id_column=id_column,
        domain_column=DOMAIN_COLUMN if DOMAIN_COLUMN in columns else None,
    )
