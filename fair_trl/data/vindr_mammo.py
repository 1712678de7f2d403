"""VinDr-Mammo (PhysioNet ``vindr-mammo`` 1.0.0): one row per mammogram, labelled with its breast's BI-RADS.

Expected layout under `data_dir` (the PhysioNet download, possibly one folder deeper)::

    breast-level_annotations.csv   study_id, series_id, image_id, laterality, view_position,
                                   height, width, breast_birads, breast_density, split
    metadata.csv                   optional; DICOM-derived, keyed by "SOP Instance UID" (= image_id),
                                   with "Patient's Age" such as "053Y" (and "Patient's Sex" if present)
    finding_annotations.csv        not used (lesion boxes)
    images/<study_id>/<image_id>.dicom   (found recursively; ".dcm" works too)

Rows and labels:

* ``solution`` is ``breast_birads`` ("BI-RADS 1" .. "BI-RADS 5"); spellings like "BIRADS 4", "4" or a
  sub-category "4A" map to the same label, anything else (e.g. "BI-RADS 0") is skipped as
  ``unknown_label``.
* ``patient_id`` is ``study_id``: the release has no patient key and each study is one woman's exam.
* ``age`` comes from metadata.csv "Patient's Age" when it holds a value, otherwise from the DICOM
  header PatientAge (0010,1010). DICOM strings ("053Y", "006M") are parsed by `fair_trl.groups`.
* ``sex`` is the metadata "Patient's Sex" column or the header PatientSex (0010,0040) when present,
  else None (the paper evaluates VinDr-Mammo by age only). ``assume_female=True`` fills unknown sex
  with "F", since the cohort is a mammography screening population.
* ``image`` is the decoded DICOM (modality LUT, first VOI window, MONOCHROME1 inverted) downscaled so
  the longer side is at most `max_side` pixels (default 1024, None keeps full size), stored as PNG
  bytes. A missing DICOM is skipped as ``missing_image``; an unparsable one as ``unreadable_dicom``;
  compressed pixel data without a decoder as ``missing_codec (<packages to pip install>)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fair_trl.data._media import MediaError, dicom_to_uint8, warn_once
from fair_trl.data._release import ImageIndex, find_file, locate_file, read_csv, require_dir
from fair_trl.data.schema import BuildSummary, png_bytes, schema_age, schema_sex

__all__ = ["ANNOTATIONS_FILE", "METADATA_FILE", "parse_birads", "read"]

NAME = "vindr_mammo"
ANNOTATIONS_FILE = "breast-level_annotations.csv"
METADATA_FILE = "metadata.csv"
REQUIRED_COLUMNS = ("study_id", "image_id", "breast_birads")
AGE_COLUMN = "Patient's Age"
SEX_COLUMN = "Patient's Sex"
# metadata.csv's key: "SOP Instance UID" in the release; tolerate an already-renamed export.
METADATA_KEYS = ("SOP Instance UID", "SOPInstanceUID", "image_id")

_BIRADS = re.compile(r"(?:bi\W*rads)?\W*([0-6])\s*[abc]?", re.IGNORECASE)


def parse_birads(value: str) -> str | None:
    """The canonical label of a BI-RADS value ("BI-RADS 3", "birads 3", "3", "4A"); None for 0, 6 or other text."""
    match = _BIRADS.fullmatch(value.strip())
    if not match or match.group(1) in ("0", "6"):
        return None
    return f"BI-RADS {match.group(1)}"


def _metadata_columns(cells: list[str]) -> list[str]:
    """metadata.csv's header with its image key (the first of METADATA_KEYS present) named METADATA_KEYS[0]."""
    key = next((name for name in METADATA_KEYS if name in cells), None)
    return [METADATA_KEYS[0] if name == key else name for name in cells]


def _read_metadata(path: Path) -> dict[str, dict[str, str]]:
    """image_id -> {"age": ..., "sex": ...} from metadata.csv."""
    records = read_csv(path, (METADATA_KEYS[0], AGE_COLUMN), header=_metadata_columns, errors="replace")
    return {
        record[METADATA_KEYS[0]]: {"age": record[AGE_COLUMN], "sex": record.get(SEX_COLUMN, "")} for record in records
    }


def _pick(paths: Sequence[Path], study_id: str) -> Path:
    for path in paths:
        if path.parent.name == study_id:
            return path
    return paths[0]


def _header_text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword) if ds is not None else None
    return "" if value is None else str(value).strip()


def read(
    data_dir: Path | None,
    summary: BuildSummary,
    *,
    seed: int = 0,
    progress: bool = False,
    max_side: int | None = 1024,
    assume_female: bool = False,
) -> list[dict[str, Any]]:
    """Schema rows for every breast-level annotation whose DICOM exists and decodes."""
    del seed  # deterministic reader
    root = require_dir(data_dir, NAME, f"the folder holding {ANNOTATIONS_FILE}")
    annotations_path = locate_file(root, ANNOTATIONS_FILE, dataset=NAME, depth=2, ignore_case=True)
    records = read_csv(annotations_path, REQUIRED_COLUMNS, errors="replace")

    metadata_path = find_file(annotations_path.parent, METADATA_FILE, depth=0, ignore_case=True)
    metadata = _read_metadata(metadata_path) if metadata_path is not None else {}

    index: dict[str, list[Path]] = {}
    for path in ImageIndex(root, (".dicom", ".dcm")).paths:
        index.setdefault(path.stem, []).append(path)

    rows: list[dict[str, Any]] = []
    for record in tqdm(records, desc=NAME, disable=not progress):
        study_id = record["study_id"]
        image_id = record["image_id"]
        label = parse_birads(record["breast_birads"])
        if label is None:
            summary.skipped["unknown_label"] += 1
            continue
        candidates = index.get(image_id)
        if not candidates:
            summary.skipped["missing_image"] += 1
            continue
        try:
            pixels, header_ds = dicom_to_uint8(_pick(candidates, study_id), max_side=max_side)
        except MediaError as err:
            summary.skipped[err.reason] += 1
            warn_once(f"{NAME}:{err.reason}:{id(summary)}", f"{NAME}: skipping unreadable images, e.g. {err}")
            continue

        meta = metadata.get(image_id, {})
        age_value = meta.get("age") or _header_text(header_ds, "PatientAge") or None
        sex_value = meta.get("sex") or _header_text(header_ds, "PatientSex") or None
        if sex_value is None and assume_female:
            sex_value = "F"
        rows.append(
            {
                "image": png_bytes(pixels),
                "solution": label,
                "dataset": NAME,
                "patient_id": study_id,
                "age": schema_age(age_value, summary, column=AGE_COLUMN),
                "sex": schema_sex(sex_value, summary, column=SEX_COLUMN),
            }
        )

    if not rows:
        packages = sorted(
            reason.removeprefix("missing_codec (").removesuffix(")")
            for reason in summary.skipped
            if reason.startswith("missing_codec")
        )
        if packages:
            raise RuntimeError(
                f"{NAME}: no DICOM under {root} could be decoded; pydicom needs an extra decoder: "
                + " and ".join(f"`pip install {p}`" for p in packages)
                + " (or python-gdcm)"
            )
    return rows
