"""Saving built datasets and loading a split for training or evaluation.

* `build_and_save(name, data_dir, out_dir, ...)` builds with `build_dataset`, writes the DatasetDict with
  ``save_to_disk(out_dir)`` (image files are embedded, so the result no longer needs the release) and
  the build summary (`BuildSummary.to_dict()` plus a ``build`` entry with data_dir, test_size, seed and
  the builder options) as ``out_dir/build_summary.json``. ``fair-trl build-dataset`` calls it.
* `load_split(source, split)` loads one split: a directory written by ``save_to_disk`` (a DatasetDict,
  or a single Dataset, which is returned whatever `split` says) is read with ``load_from_disk``; any
  other source goes to ``datasets.load_dataset(source, split=split)`` (a Hub dataset name, or a local
  folder of data files such as ``train.jsonl``/``test.parquet``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from fair_trl.data import build_dataset
from fair_trl.data.schema import BuildSummary

__all__ = ["SUMMARY_FILE", "build_and_save", "is_saved_dataset", "load_split"]

SUMMARY_FILE = "build_summary.json"
# Files `save_to_disk` writes at the top of its directory: DatasetDict / Dataset.
_SAVED_MARKERS = ("dataset_dict.json", "state.json")


def is_saved_dataset(path: str | Path) -> bool:
    """Whether `path` is a directory written by ``save_to_disk``."""
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in _SAVED_MARKERS)


def _looks_like_path(source: str | Path) -> bool:
    if isinstance(source, Path):
        return True
    return source.startswith(("/", "./", "../", "~", "\\")) or Path(source).exists()


# A single data file, by suffix: the `datasets` builder that reads it (its rows are the one split "train").
DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_split(source: str | Path, split: str = "train") -> Dataset:
    """One split of a saved dataset directory, a jsonl/CSV/parquet file, a local data-file folder or a Hub dataset."""
    suffix = Path(str(source)).suffix.lower()
    if suffix in DATA_FILE_BUILDERS and Path(source).expanduser().is_file():
        return datasets.load_dataset(
            DATA_FILE_BUILDERS[suffix], data_files=str(Path(source).expanduser()), split="train"
        )
    if is_saved_dataset(source):
        loaded = datasets.load_from_disk(str(source))
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise ValueError(f"{source} has no split {split!r}; available splits: {sorted(loaded)}")
            return loaded[split]
        return loaded
    if _looks_like_path(source) and not Path(source).expanduser().exists():
        raise FileNotFoundError(f"dataset source {str(source)!r} does not exist (expected a save_to_disk directory)")
    try:
        name = str(Path(source).expanduser()) if _looks_like_path(source) else str(source)
        return datasets.load_dataset(name, split=split)
    except ValueError as err:
        if "split" in str(err).lower():
            raise ValueError(f"{source} has no split {split!r}: {err}") from err
        raise


def build_and_save(
    name: str,
    data_dir: str | Path | None,
    out_dir: str | Path,
    *,
    test_size: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> BuildSummary:
    """Build `name` from `data_dir`, save it to `out_dir` with its summary, and return the summary."""
    dataset_dict, summary = build_dataset(
        name, data_dir, test_size=test_size, seed=seed, progress=progress, return_summary=True, **options
    )
    assert isinstance(dataset_dict, DatasetDict)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # An empty split (test_size=0) needs one explicit shard, or load_from_disk cannot read it back.
    num_shards = {name: 1 for name, split in dataset_dict.items() if len(split) == 0}
    dataset_dict.save_to_disk(str(out), num_shards=num_shards or None)
    record = summary.to_dict()
    record["build"] = {
        "data_dir": None if data_dir is None else str(data_dir),
        "test_size": test_size,
        "seed": seed,
        "options": options,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return summary
