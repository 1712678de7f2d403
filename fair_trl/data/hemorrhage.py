"""Hemorrhage: CT-ICH (Hssayeni et al. 2020, PhysioNet ``ct-ich`` 1.0.0 / the Kaggle copy), one row per CT slice.

Expected layout under `data_dir` (possibly one folder deeper, as the zip unpacks)::

    hemorrhage_diagnosis.csv       PatientNumber, SliceNumber, Intraventricular, Intraparenchymal,
                                   Subarachnoid, Epidural, Subdural, No_Hemorrhage, Fracture_Yes_No
                                   (also accepted: hemorrhage_diagnosis_raw_ct.csv, and the README's
                                   misspelling hemmorhage_diagnosis.csv)
    patient_demographics.csv       patient number, age, gender (+ per-scan labels). The header may span
                                   two rows ("Patient Number", "Age\\n(years)", "Gender", then a row of
                                   hemorrhage sub-type names); columns are matched by name prefix
                                   ("patient...", "age...", "gender"/"sex") and rows by their number.
    Patients_CT/<NNN>/brain/<slice>.jpg   brain window (level 40, width 120); <slice>_HGE_Seg.jpg masks
    Patients_CT/<NNN>/bone/<slice>.jpg    bone window (level 700, width 3200)

Rows and labels:

* ``solution``: ``No_Hemorrhage == 1`` -> "No Hemorrhage", ``== 0`` -> "Has Hemorrhage" (the sub-type
  columns are not consulted); any other value is skipped as ``unknown_label``.
* ``patient_id``: the patient number zero-padded to three digits, like the Patients_CT folders ("049").
* ``age``/``sex``: from the demographics file; ages written as "4 months" or "10 days" become years.
  Patients missing from that file get None (counted as missing).
* ``window`` option: "brain" (default) uses the brain-window JPEG, "bone" the bone-window one, "both"
  gives ``images`` = [brain, bone]. A slice whose JPEG(s) are absent is skipped as ``missing_image``.

The NIfTI-only releases (ct-ich 1.3.x: ``ct_scans/*.nii`` and hemorrhage_diagnosis_raw_ct.csv) are not
decoded here; with no slice JPEG at all the reader raises FileNotFoundError explaining what it needs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fair_trl.data._release import ImageIndex, decodable, locate_file, read_csv, require_dir
from fair_trl.data.schema import BuildSummary, schema_age, schema_sex

__all__ = ["DEMOGRAPHICS_FILES", "DIAGNOSIS_FILES", "WINDOWS", "read"]

NAME = "hemorrhage"
DIAGNOSIS_FILES = ("hemorrhage_diagnosis.csv", "hemmorhage_diagnosis.csv", "hemorrhage_diagnosis_raw_ct.csv")
DEMOGRAPHICS_FILES = ("patient_demographics.csv", "Patient_demographics.csv")
REQUIRED_COLUMNS = ("PatientNumber", "SliceNumber", "No_Hemorrhage")
DEMOGRAPHICS_COLUMNS = ("Patient Number", "Age", "Gender")
WINDOWS = ("brain", "bone", "both")
MASK_SUFFIX = "_hge_seg"

_AGE_UNITS = {"day": 1 / 365.25, "week": 7 / 365.25, "month": 1 / 12, "year": 1.0}
_AGE_TEXT = re.compile(r"([0-9]*\.?[0-9]+)\s*(day|week|month|year)s?", re.IGNORECASE)


def _as_int(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _age_value(text: str) -> Any:
    """Age text for schema_age; "4 months" / "10 days" become years (a float), other text is kept."""
    match = _AGE_TEXT.fullmatch(text.strip())
    if match:
        return float(match.group(1)) * _AGE_UNITS[match.group(2).lower()]
    return text


def _norm(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def _demographics_columns(cells: list[str]) -> list[str] | None:
    """The header row of the demographics file (the first naming a patient and an age column, matched by
    name prefix), with those and the gender/sex column renamed to DEMOGRAPHICS_COLUMNS; None for other rows."""
    names = [_norm(cell) for cell in cells]
    patient_at = next((i for i, n in enumerate(names) if n.startswith("patient")), None)
    age_at = next((i for i, n in enumerate(names) if n.startswith("age")), None)
    if patient_at is None or age_at is None:
        return None
    sex_at = next((i for i, n in enumerate(names) if n in ("gender", "sex")), None)
    picked = dict(zip((patient_at, age_at, sex_at), DEMOGRAPHICS_COLUMNS, strict=True))
    # Other columns that already carry one of those names are blanked: the first match is the one read.
    return [picked.get(i, "" if cell in DEMOGRAPHICS_COLUMNS else cell) for i, cell in enumerate(cells)]


def _read_demographics(path: Path) -> dict[int, tuple[str, str]]:
    """patient number -> (age text, gender text)."""
    patient, age, sex = DEMOGRAPHICS_COLUMNS
    out: dict[int, tuple[str, str]] = {}
    for record in read_csv(path, DEMOGRAPHICS_COLUMNS, header=_demographics_columns, errors="replace"):
        number = _as_int(record[patient])
        if number is None:  # the second header row, notes, totals
            continue
        out[number] = (record[age], record[sex])
    return out


def _index_slices(root: Path) -> dict[tuple[int, str, int], Path]:
    """(patient number, window, slice number) -> JPEG path, masks excluded."""
    index: dict[tuple[int, str, int], Path] = {}
    for path in ImageIndex(root, (".jpg", ".jpeg")).paths:
        if path.stem.lower().endswith(MASK_SUFFIX):
            continue
        window = path.parent.name.lower()
        patient = _as_int(path.parent.parent.name)
        number = _as_int(path.stem)
        if window in ("brain", "bone") and patient is not None and number is not None:
            index[(patient, window, number)] = path
    return index


def read(
    data_dir: Path | None,
    summary: BuildSummary,
    *,
    seed: int = 0,
    progress: bool = False,
    window: str = "brain",
) -> list[dict[str, Any]]:
    """Schema rows for every labelled slice whose window JPEG(s) exist."""
    del seed  # deterministic reader
    if window not in WINDOWS:
        raise ValueError(f"{NAME}: window must be one of {list(WINDOWS)}, got {window!r}")
    root = require_dir(data_dir, NAME, f"the folder holding {DIAGNOSIS_FILES[0]} and Patients_CT/")
    diagnosis_path = locate_file(root, DIAGNOSIS_FILES, dataset=NAME, depth=2, ignore_case=True)
    demographics_path = locate_file(root, DEMOGRAPHICS_FILES, dataset=NAME, depth=2, ignore_case=True)
    records = read_csv(diagnosis_path, REQUIRED_COLUMNS, errors="replace")
    demographics = _read_demographics(demographics_path)

    slices = _index_slices(root)
    if not slices:
        raise FileNotFoundError(
            f"{NAME}: no slice images Patients_CT/<NNN>/brain/<slice>.jpg found under {root}; this reader needs "
            "the JPEG release (ct-ich 1.0.0 or its Kaggle copy), not the NIfTI-only ct_scans/*.nii release"
        )
    windows = ("brain", "bone") if window == "both" else (window,)

    rows: list[dict[str, Any]] = []
    for record in tqdm(records, desc=NAME, disable=not progress):
        patient = _as_int(record["PatientNumber"])
        number = _as_int(record["SliceNumber"])
        flag = _as_int(record["No_Hemorrhage"])
        if patient is None or number is None:
            summary.skipped["invalid_row"] += 1
            continue
        if flag not in (0, 1):
            summary.skipped["unknown_label"] += 1
            continue
        paths = [slices.get((patient, w, number)) for w in windows]
        if any(p is None for p in paths):
            summary.skipped["missing_image"] += 1
            continue
        if not decodable(paths, summary):
            continue
        age_text, sex_text = demographics.get(patient, (None, None))
        row: dict[str, Any] = {
            "solution": "No Hemorrhage" if flag == 1 else "Has Hemorrhage",
            "dataset": NAME,
            "patient_id": f"{patient:03d}",
            "age": schema_age(_age_value(age_text) if age_text is not None else None, summary, column="age"),
            "sex": schema_sex(sex_text, summary, column="gender"),
        }
        files = [str(p.resolve()) for p in paths if p is not None]
        if window == "both":
            row["images"] = files
        else:
            row["image"] = files[0]
        rows.append(row)
    return rows
