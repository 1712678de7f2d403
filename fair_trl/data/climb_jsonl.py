"""The FairGRPO authors' jsonl files: one JSON object per line, one row per line.

Expected layout: ``data_dir`` is a ``.jsonl`` file, or a directory whose ``*.jsonl`` files (searched
recursively, read in sorted path order) are all read. Each line holds an object with

* ``problem``: the question text; ``<image>`` placeholders are removed and whitespace collapsed, and the
  rest becomes the row's question (`make_prompt` keeps it; see there).
* ``answer``: the label; several labels comma-separated.
* ``images``: a list of image paths (a single string is accepted too), relative to the jsonl file's
  directory or absolute. One image gives an ``image`` row, several an ``images`` row.
* ``dataset``: the dataset name in any spelling the paper uses ("CheXpert", "HAM10000", "PAD-UFES-20",
  ...), mapped to the registry name with `fair_trl.labels.canonical_dataset`; an unknown name is kept.
* ``demo`` (optional): demographics like ``"sex: Male, age: 68"``; either part may be missing or
  "unknown". Top-level ``age``/``sex``/``gender`` fields, when present and not null, take precedence.
* ``patient_id`` or ``id`` (optional): the patient; otherwise the stem of the line's first image path
  (so, without ids, every image is its own patient and the split is per image).

Labels of a known dataset are mapped onto its canonical labels (`DATASET_LABELS`, also through
`SYNONYMS` and case/punctuation-insensitive matching) and joined in the canonical order; a line with
a label that does not map is skipped (``unknown_label``). For an unknown dataset the answer is kept
as written (parts stripped and re-joined with ", ").

Blank lines are ignored. A line that is not a JSON object raises ValueError naming the file and the
line number; so does a line missing ``problem``/``answer``/``images``/``dataset``. A line whose image
file does not exist is skipped (``missing_image``), one with an empty image list too (``no_image``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fair_trl.data._release import decodable
from fair_trl.data.schema import BuildSummary, schema_age, schema_sex
from fair_trl.labels import DATASET_LABELS, SYNONYMS, canonical_dataset, label_key

__all__ = ["jsonl_files", "parse_demo", "read"]

REQUIRED_FIELDS = ("problem", "answer", "images", "dataset")
_PLACEHOLDER = re.compile(r"<image>", re.IGNORECASE)
_DEMO_PART = re.compile(r"\b(sex|gender|age)\s*[:=]\s*([^,;]*)", re.IGNORECASE)


def jsonl_files(path: Path) -> list[Path]:
    """The jsonl file `path`, or the ``*.jsonl`` files under the directory `path` (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"climb_jsonl: expected a .jsonl file or a directory of them, {path} does not exist")
    files = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
    if not files:
        raise FileNotFoundError(f"climb_jsonl: no *.jsonl file found in directory {path} (searched recursively)")
    return files


def parse_demo(demo: Any) -> tuple[str | None, str | None]:
    """Raw (age, sex) strings from a ``demo`` field like ``"sex: Male, age: 68"`` (None where absent)."""
    if not isinstance(demo, str):
        return None, None
    age = sex = None
    for key, value in _DEMO_PART.findall(demo):
        if key.lower() == "age":
            age = value.strip()
        else:
            sex = value.strip()
    return age, sex


def _label_lookup(dataset: str) -> dict[str, str]:
    labels = DATASET_LABELS[dataset]
    lookup = {label_key(label): label for label in labels}
    for label in labels:
        for synonym in SYNONYMS.get(label, ()):
            lookup.setdefault(label_key(synonym), label)
    return lookup


def _solution(answer: Any, dataset: str, lookups: dict[str, dict[str, str]]) -> str | None:
    """The canonical solution string, or None when a label cannot be mapped."""
    parts = [part.strip() for part in str(answer).split(",") if part.strip()]
    if not parts:
        return None
    if dataset not in DATASET_LABELS:
        return ", ".join(parts)
    lookup = lookups.setdefault(dataset, _label_lookup(dataset))
    found = set()
    for part in parts:
        label = lookup.get(label_key(part))
        if label is None:
            return None
        found.add(label)
    return ", ".join(label for label in DATASET_LABELS[dataset] if label in found)


def _question(problem: Any) -> str:
    return " ".join(_PLACEHOLDER.sub(" ", str(problem)).split())


def read(
    data_dir: Path | None,
    summary: BuildSummary,
    *,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Rows of the authors' jsonl file(s) at `data_dir` (see the module docstring)."""
    del seed  # reading is deterministic
    if data_dir is None:
        raise ValueError("climb_jsonl: pass the path of a .jsonl file or of a directory holding them")
    files = jsonl_files(Path(data_dir))
    lookups: dict[str, dict[str, str]] = {}
    rows: list[dict[str, Any]] = []
    for file in files:
        with file.open(encoding="utf-8") as handle:
            lines = handle.readlines()
        for number, line in enumerate(tqdm(lines, desc="climb_jsonl", disable=not progress), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"climb_jsonl: {file} line {number} is not valid JSON: {err.msg}") from None
            if not isinstance(record, dict):
                raise ValueError(f"climb_jsonl: {file} line {number} is not a JSON object")
            missing = [name for name in REQUIRED_FIELDS if name not in record]
            if missing:
                raise ValueError(
                    f"climb_jsonl: {file} line {number} lacks field(s) {missing}; fields present: {sorted(record)}"
                )
            row = _row(record, file, number, summary, lookups)
            if row is not None:
                rows.append(row)
    return rows


def _row(
    record: dict[str, Any], file: Path, number: int, summary: BuildSummary, lookups: dict[str, dict[str, str]]
) -> dict[str, Any] | None:
    raw_name = str(record["dataset"]).strip()
    dataset = canonical_dataset(raw_name) or raw_name
    images = record["images"]
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise ValueError(f"climb_jsonl: {file} line {number}: 'images' must be a list of paths, got {images!r}")
    if not images:
        summary.skipped["no_image"] += 1
        return None
    paths = [p if (p := Path(image).expanduser()).is_absolute() else file.parent / p for image in images]
    if not all(p.is_file() for p in paths):
        summary.skipped["missing_image"] += 1
        return None
    if not decodable(paths, summary):
        return None
    solution = _solution(record["answer"], dataset, lookups)
    if solution is None:
        summary.skipped["unknown_label"] += 1
        return None

    demo_age, demo_sex = parse_demo(record.get("demo"))
    age = record.get("age")
    age = demo_age if age is None else age
    sex = next((record[k] for k in ("sex", "gender") if record.get(k) is not None), demo_sex)
    patient = record.get("patient_id", record.get("id"))
    if patient is None or not str(patient).strip():
        patient = Path(images[0]).stem
    row: dict[str, Any] = {
        "solution": solution,
        "dataset": dataset,
        "patient_id": str(patient).strip(),
        "age": schema_age(age, summary, column="age"),
        "sex": schema_sex(sex, summary, column="sex"),
    }
    question = _question(record["problem"])
    if question:
        row["question"] = question
    elif dataset not in DATASET_LABELS:
        raise ValueError(f"climb_jsonl: {file} line {number}: empty 'problem' for dataset {raw_name!r}")
    if len(paths) == 1:
        row["image"] = str(paths[0].resolve())
    else:
        row["images"] = [str(p.resolve()) for p in paths]
    return row
