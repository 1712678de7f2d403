"""ISIC 2020 (SIIM-ISIC melanoma challenge, Rotemberg et al., 2021) training set from its public release.

Layouts expected under `data_dir` (the release folder, or a folder holding it as a direct subfolder); the
first metadata file found of

    ISIC_2020_Training_GroundTruth_v2.csv   (ISIC archive; adds lesion_id)
    ISIC_2020_Training_GroundTruth.csv      (ISIC archive)
    train.csv                               (Kaggle competition copy)

with columns image_name, patient_id, sex, age_approx, anatom_site_general_challenge, diagnosis,
benign_malignant, target (``target`` or ``benign_malignant`` must be there; the demographic and id
columns are required). Images are ``<image_name>.jpg`` anywhere under the metadata file's folder, e.g.
``jpeg/train/`` (Kaggle) or ``ISIC_2020_Training_JPEG/train/`` (ISIC archive). When no JPEG/PNG is found
for a row but ``<image_name>.dcm`` is (Kaggle's ``train/`` folder), the DICOM is decoded with pydicom
(``pip install fair-trl[data]``) by `fair_trl.data._media.dicom_to_uint8` (as a viewer shows it),
downscaled to `max_side` pixels on its longer side and stored as PNG bytes; prefer the JPEG folder, which
is lazily read and much lighter. No image at all -> the row is skipped (``skipped["missing_image"]``); an
unreadable DICOM -> ``skipped["unreadable_image"]``.

Labels: ``target`` 1 -> Malignant, 0 -> Benign; when ``target`` is blank or absent, ``benign_malignant``
(malignant/benign). Anything else -> ``skipped["unknown_label"]``.

Demographics: ``age_approx`` (5-year bins; blank = missing) and ``sex`` (male/female; blank = missing).
Patient id: ``patient_id`` (``IP_...``); a blank one falls back to the image name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fair_trl.data._media import MediaError, dicom_to_uint8, warn_once
from fair_trl.data._release import ImageIndex, decodable, locate_file, read_csv, require_dir
from fair_trl.data.schema import BuildSummary, png_bytes, schema_age, schema_sex

NAME = "isic2020"
METADATA_FILES = (
    "ISIC_2020_Training_GroundTruth_v2.csv",
    "ISIC_2020_Training_GroundTruth.csv",
    "train.csv",
)
REQUIRED_COLUMNS = ("image_name", "patient_id", "sex", "age_approx")
LABEL_COLUMNS = ("target", "benign_malignant")

_TARGET = {"1": "Malignant", "1.0": "Malignant", "0": "Benign", "0.0": "Benign"}
_BENIGN_MALIGNANT = {"malignant": "Malignant", "benign": "Benign"}
_RASTER_SUFFIXES = (".jpg", ".jpeg", ".png")


def read(
    data_dir: Path | None,
    summary: BuildSummary,
    *,
    seed: int = 0,
    progress: bool = False,
    max_side: int = 1024,
) -> list[dict[str, Any]]:
    """Schema rows (one per image) of the ISIC 2020 training release under `data_dir`.

    `max_side` only applies to images decoded from DICOM (see the module docstring).
    """
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise ValueError(f"{NAME}: max_side must be a positive int, got {max_side!r}")
    root = require_dir(data_dir, NAME)
    metadata = locate_file(root, METADATA_FILES, dataset=NAME)
    records = read_csv(metadata, REQUIRED_COLUMNS)
    if records and not any(column in records[0] for column in LABEL_COLUMNS):
        raise ValueError(
            f"{str(metadata)!r} lacks a label column: expected 'target' or 'benign_malignant'; "
            f"columns present: {list(records[0])}"
        )
    images = ImageIndex(metadata.parent, (*_RASTER_SUFFIXES, ".dcm"))
    rows = []
    for record in tqdm(records, desc=NAME, disable=not progress):
        label = _label(record)
        if label is None:
            summary.skipped["unknown_label"] += 1
            continue
        name = record["image_name"]
        path = images.find(name, _RASTER_SUFFIXES)
        if path is not None:
            if not decodable([path], summary):
                continue
            image: Any = str(path.absolute())
        else:
            dicom = images.find(name, (".dcm",))
            if dicom is None:
                summary.skipped["missing_image"] += 1
                continue
            image = _dicom_png(dicom, max_side, summary)
            if image is None:
                summary.skipped["unreadable_image"] += 1
                continue
        rows.append(
            {
                "image": image,
                "solution": label,
                "dataset": NAME,
                "patient_id": record["patient_id"] or name,
                "age": schema_age(record["age_approx"], summary, column="age_approx"),
                "sex": schema_sex(record["sex"], summary, column="sex"),
            }
        )
    return rows


def _label(record: dict[str, str]) -> str | None:
    target = record.get("target", "")
    if target:
        return _TARGET.get(target)
    return _BENIGN_MALIGNANT.get(record.get("benign_malignant", "").lower())


def _dicom_png(path: Path, max_side: int, summary: BuildSummary) -> dict[str, Any] | None:
    """PNG bytes of a dermoscopy DICOM (RGB or grayscale) as `_media.dicom_to_uint8` displays it, downscaled
    to `max_side`; None if unreadable (the reason, e.g. a missing codec, is logged once per build)."""
    try:
        pixels, _ = dicom_to_uint8(path, max_side=max_side)
    except ImportError as err:  # pragma: no cover - pydicom ships with the data extra
        raise ImportError(
            f"{NAME}: {path} is DICOM and needs pydicom; install fair-trl[data] or use the JPEG images"
        ) from err
    except Exception as err:  # noqa: BLE001 - any decoding failure means "skip this image"
        reason = err.reason if isinstance(err, MediaError) else "unreadable_dicom"
        warn_once(f"{NAME}:{reason}:{id(summary)}", f"{NAME}: skipping unreadable DICOM images, e.g. {err}")
        return None
    return png_bytes(pixels)
