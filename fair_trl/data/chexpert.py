"""CheXpert v1.0 (Irvin et al., 2019), full or ``CheXpert-v1.0-small``, from its public release.

Layout expected (`data_dir` is the release folder, or the folder it was unpacked into)::

    CheXpert-v1.0-small/
        train.csv   Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, Enlarged Cardiomediastinum,
        valid.csv   Cardiomegaly, Lung Opacity, Lung Lesion, Edema, Consolidation, Pneumonia, Atelectasis,
                    Pneumothorax, Pleural Effusion, Pleural Other, Fracture, Support Devices
        train/patient00001/study1/view1_frontal.jpg
        valid/patient64541/study1/view1_frontal.jpg

Both CSVs are read by default (`csv_files`); the builder makes its own patient split, so the release's
train/valid division is not kept. ``Path`` values start with the release folder's name
("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"); they are resolved against the parent
of the folder holding the CSVs, against that folder itself, and with their first component dropped (so a
renamed release folder works too). Rows whose image is not found -> ``skipped["missing_image"]``.

Labels: each observation column holds 1 (positive), 0 (negative), -1 (uncertain) or blank (not mentioned,
treated as negative). `uncertain` decides what -1 means:

* ``"negative"`` (default, "U-Zeros"): uncertain findings are left out, so the answer lists only what the
  report states as present.
* ``"positive"`` ("U-Ones"): uncertain findings are listed as present.
* ``"drop"``: rows with any uncertain observation are skipped (``skipped["uncertain_label"]``).

The solution is the positive observations in the canonical order of `fair_trl.labels.CHEXPERT_LABELS`,
joined with ", ". The release's own "No Finding" column is used as is (it can be positive next to
"Support Devices"); a row with no positive observation at all after the policy becomes "No Finding". A
cell that is not 1/0/-1/blank -> the row is skipped (``skipped["unknown_label"]``).

`frontal_only=True` keeps frontal views only (``Frontal/Lateral == "Frontal"``); the others are counted
as ``skipped["not_frontal"]``.

Demographics: ``Age`` (0 means not recorded -> missing) and ``Sex`` (Male/Female; "Unknown" -> missing).
Patient id: the ``patientNNNNN`` folder in ``Path``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from fair_trl.data._release import decodable, locate_file, read_csv, require_dir
from fair_trl.data.schema import BuildSummary, schema_age, schema_sex
from fair_trl.labels import DATASET_LABELS

NAME = "chexpert"
OBSERVATIONS = DATASET_LABELS[NAME]
REQUIRED_COLUMNS = ("Path", "Sex", "Age", *OBSERVATIONS)
UNCERTAIN_POLICIES = ("negative", "positive", "drop")
NO_FINDING = "No Finding"

_VALUES = {"": 0, "0": 0, "0.0": 0, "1": 1, "1.0": 1, "-1": -1, "-1.0": -1}
_PATIENT = re.compile(r"patient\d+", re.IGNORECASE)


def read(
    data_dir: Path | None,
    summary: BuildSummary,
    *,
    seed: int = 0,
    progress: bool = False,
    uncertain: str = "negative",
    frontal_only: bool = False,
    csv_files: Sequence[str] = ("train.csv", "valid.csv"),
) -> list[dict[str, Any]]:
    """Schema rows (one per radiograph) of the CheXpert release under `data_dir`.

    `uncertain` is "negative" (U-Zeros), "positive" (U-Ones) or "drop"; `frontal_only` drops lateral
    views; `csv_files` are the label files read (all must exist, next to each other).
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"{NAME}: uncertain must be one of {list(UNCERTAIN_POLICIES)}, got {uncertain!r}")
    if isinstance(csv_files, str):
        csv_files = (csv_files,)
    if not csv_files:
        raise ValueError(f"{NAME}: csv_files must name at least one CSV file")
    root = require_dir(data_dir, NAME)
    first = locate_file(root, csv_files[0], dataset=NAME)
    release = first.parent
    required = (*REQUIRED_COLUMNS, "Frontal/Lateral") if frontal_only else REQUIRED_COLUMNS
    records: list[dict[str, str]] = []
    for name in csv_files:
        path = first if name == csv_files[0] else locate_file(release, name, dataset=NAME)
        records.extend(read_csv(path, required))

    bases = (release.parent, release)
    rows = []
    for record in tqdm(records, desc=NAME, disable=not progress):
        if frontal_only and record["Frontal/Lateral"].lower() != "frontal":
            summary.skipped["not_frontal"] += 1
            continue
        values = [_VALUES.get(record[observation]) for observation in OBSERVATIONS]
        if any(value is None for value in values):
            summary.skipped["unknown_label"] += 1
            continue
        if uncertain == "drop" and -1 in values:
            summary.skipped["uncertain_label"] += 1
            continue
        present = (1, -1) if uncertain == "positive" else (1,)
        findings = [obs for obs, value in zip(OBSERVATIONS, values, strict=True) if value in present]
        image = _resolve(record["Path"], bases)
        if image is None:
            summary.skipped["missing_image"] += 1
            continue
        if not decodable([image], summary):
            continue
        rows.append(
            {
                "image": str(image.absolute()),
                "solution": ", ".join(findings) if findings else NO_FINDING,
                "dataset": NAME,
                "patient_id": _patient_id(record["Path"]),
                "age": schema_age(record["Age"], summary, column="Age"),
                "sex": schema_sex(record["Sex"], summary, column="Sex"),
            }
        )
    return rows


def _resolve(value: str, bases: tuple[Path, Path]) -> Path | None:
    """The image file a ``Path`` cell names, tried under the release's parent, the release, and without its
    leading (release folder) component."""
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if not parts:
        return None
    candidates = [base.joinpath(*parts) for base in bases]
    if len(parts) > 1:
        candidates.append(bases[1].joinpath(*parts[1:]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _patient_id(value: str) -> str:
    match = _PATIENT.search(value)
    if match:
        return match.group(0).lower()
    parts = PurePosixPath(value.replace("\\", "/")).parts
    return parts[-3] if len(parts) >= 3 else value
