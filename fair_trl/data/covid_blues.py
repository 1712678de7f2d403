"""COVID-BLUES (Wiedemann et al. 2021, github.com/NinaWie/COVID-BLUES): one row per lung ultrasound video.

Expected layout under `data_dir` (a clone of the repository or the data release)::

    clinical_variables.csv   one row per patient: patient_id, cov_test (1 = positive PCR),
                             number_video_files, pat_sex (0 = female, 1 = male), pat_age (years), ...
                             -99 / -96 mark values that were not recorded.
    lus_videos/patient_<ID>_<POINT>[_<N>].mp4
                             POINT is a BLUE point L1-L3 / R1-R3; a second take of a point has "_2".
                             Found recursively; .avi/.mov/.mkv work too.

Rows and labels:

* ``solution``: cov_test 1 -> "Has COVID", 0 -> "No COVID"; other values are skipped as ``unknown_label``.
* ``patient_id``: the release's patient_id; all videos of one patient stay on one side of the split.
* ``age``: pat_age; the release's negative missing-value codes count as missing.
* ``sex``: pat_sex decoded with the release's own key (variable_explanations.csv: 0 = female,
  1 = male). The paper evaluates COVID-BLUES by age only; ``include_sex=False`` leaves sex None.
* Frames: ``frames_per_video`` (default 1) frames per video, decoded with PyAV: 1 is the middle
  frame (``image``); more are evenly spaced over the video (``images``). ``max_side`` optionally
  bounds the longer side. Frames are stored as PNG bytes.
* A video of a patient absent from the table is skipped as ``unknown_patient``; an undecodable video
  as ``unreadable_video``. Where the table says a patient has more videos (number_video_files) than
  are on disk, the shortfall is counted as ``missing_video``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fair_trl.data._media import MediaError, video_frames, warn_once
from fair_trl.data._release import ImageIndex, locate_file, read_csv, require_dir
from fair_trl.data.schema import BuildSummary, png_bytes, schema_age, schema_sex

__all__ = ["CLINICAL_FILE", "VIDEO_PATTERN", "read"]

NAME = "covid_blues"
CLINICAL_FILE = "clinical_variables.csv"
REQUIRED_COLUMNS = ("patient_id", "cov_test", "pat_age")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
VIDEO_PATTERN = re.compile(r"patient_(\d+)_([LR][1-3])(?:_(\d+))?", re.IGNORECASE)
_SEX_CODES = {0: "F", 1: "M"}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _patient_key(text: str) -> str:
    number = _number(text)
    return str(int(number)) if number is not None and number.is_integer() else text.strip()


def _age(text: str) -> str | None:
    number = _number(text)
    if number is not None and number < 0:  # -99 / -96: "not recorded" in this release
        return None
    return text


def _sex(text: str) -> str | None:
    number = _number(text)
    if number is not None and number.is_integer() and int(number) in _SEX_CODES:
        return _SEX_CODES[int(number)]
    if number is not None and number < 0:
        return None
    return text  # blank -> missing, anything else -> counted as invalid by schema_sex


def read(
    data_dir: Path | None,
    summary: BuildSummary,
    *,
    seed: int = 0,
    progress: bool = False,
    frames_per_video: int = 1,
    max_side: int | None = None,
    include_sex: bool = True,
) -> list[dict[str, Any]]:
    """Schema rows for every video of a patient in the clinical table that decodes."""
    del seed  # deterministic reader
    if isinstance(frames_per_video, bool) or not isinstance(frames_per_video, int) or frames_per_video < 1:
        raise ValueError(f"{NAME}: frames_per_video must be a positive integer, got {frames_per_video!r}")
    root = require_dir(data_dir, NAME, f"the folder holding {CLINICAL_FILE} and lus_videos/")
    clinical_path = locate_file(root, CLINICAL_FILE, dataset=NAME, depth=2, ignore_case=True)
    patients: dict[str, dict[str, str]] = {}
    for record in read_csv(clinical_path, REQUIRED_COLUMNS, errors="replace"):
        patients[_patient_key(record["patient_id"])] = {
            "label": record["cov_test"],
            "age": record["pat_age"],
            "sex": record.get("pat_sex", ""),
            "videos": record.get("number_video_files", ""),
        }

    videos = []
    for path in ImageIndex(root, VIDEO_SUFFIXES).paths:
        match = VIDEO_PATTERN.fullmatch(path.stem)
        if match:
            videos.append((int(match.group(1)), match.group(2).upper(), int(match.group(3) or 1), path))
    videos.sort(key=lambda v: v[:3])
    found = Counter(str(v[0]) for v in videos)
    for key, info in patients.items():
        expected = _number(info["videos"])
        if expected is not None and expected > found[key]:
            summary.skipped["missing_video"] += int(expected) - found[key]

    rows: list[dict[str, Any]] = []
    for number, _point, _take, path in tqdm(videos, desc=NAME, disable=not progress):
        info = patients.get(str(number))
        if info is None:
            summary.skipped["unknown_patient"] += 1
            continue
        code = _number(info["label"])
        if code not in (0.0, 1.0):
            summary.skipped["unknown_label"] += 1
            continue
        try:
            frames = video_frames(path, frames_per_video, max_side=max_side)
        except MediaError as err:
            summary.skipped[err.reason] += 1
            warn_once(f"{NAME}:{err.reason}:{id(summary)}", f"{NAME}: skipping unreadable videos, e.g. {err}")
            continue
        row: dict[str, Any] = {
            "solution": "Has COVID" if code == 1.0 else "No COVID",
            "dataset": NAME,
            "patient_id": str(number),
            "age": schema_age(_age(info["age"]), summary, column="pat_age"),
            "sex": schema_sex(_sex(info["sex"]), summary, column="pat_sex") if include_sex else None,
        }
        if frames_per_video == 1:
            row["image"] = png_bytes(frames[0])
        else:
            row["images"] = [png_bytes(frame) for frame in frames]
        rows.append(row)
    return rows
