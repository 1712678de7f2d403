"""COVID-BLUES builder on a tiny tree in the GitHub release layout, with real mp4 videos written by PyAV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")

from fair_trl.data import build_dataset  # noqa: E402
from fair_trl.data._media import sample_indices  # noqa: E402
from fair_trl.data.covid_blues import read  # noqa: E402
from fair_trl.data.schema import BuildSummary  # noqa: E402

HEADER = ["patient_id", "cov_test", "number_video_files", "pat_weight", "pat_sex", "pat_height", "pat_age"]
FRAMES = 8


def gray(index: int) -> int:
    """Brightness of frame `index` in every test video."""
    return 10 + 30 * index


def write_video(path: Path, frames: int = FRAMES, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            pixels = np.full((size, size, 3), gray(index), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def brightness(value) -> float:
    return float(np.asarray(Image.open(io.BytesIO(value["bytes"]))).mean())


@pytest.fixture
def release(tmp_path: Path) -> Path:
    videos = tmp_path / "lus_videos"
    write_video(videos / "patient_1_L1.mp4")
    write_video(videos / "patient_1_R1_2.mp4")
    write_video(tmp_path / "lus_videos_part2" / "patient_2_L2.mp4")
    (videos / "patient_3_R3.mp4").write_bytes(b"this is not a video")
    write_video(videos / "patient_4_L1.mp4")
    write_video(videos / "patient_5_L1.mp4")  # patient missing from the table
    (videos / "notes.mp4.txt").write_text("ignored")
    with open(tmp_path / "clinical_variables.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(
            [
                [1, 1, 2.0, 80.0, 1.0, 187.0, 60.0],
                [2, 0, 3.0, 70.0, 0.0, 160.0, -99.0],  # -99: age not recorded; 2 of 3 videos missing
                [3, 0, 1.0, "", "", "", 0],  # age 0 and blank sex: unknown
                [4, "", 1.0, 60.0, 0.0, 150.0, 71.0],  # no test result
            ]
        )
    return tmp_path


def test_rows_labels_demographics_and_skips(release):
    summary = BuildSummary("covid_blues")
    rows = read(release, summary)
    assert [(r["patient_id"], r["solution"]) for r in rows] == [
        ("1", "Has COVID"),
        ("1", "Has COVID"),
        ("2", "No COVID"),
    ]
    assert [r["age"] for r in rows] == [60, 60, None]
    assert [r["sex"] for r in rows] == ["M", "M", "F"]
    assert dict(summary.skipped) == {
        "missing_video": 2,
        "unreadable_video": 1,
        "unknown_label": 1,
        "unknown_patient": 1,
    }
    assert summary.missing["pat_age"] == 1


def test_middle_frame_is_the_image(release):
    rows = read(release, BuildSummary("covid_blues"))
    assert all("images" not in r for r in rows)
    assert abs(brightness(rows[0]["image"]) - gray(FRAMES // 2)) < 6


def test_several_frames_are_evenly_spaced(release):
    rows = read(release, BuildSummary("covid_blues"), frames_per_video=3)
    assert all("image" not in r for r in rows)
    assert [len(r["images"]) for r in rows] == [3, 3, 3]
    observed = [brightness(image) for image in rows[0]["images"]]
    assert observed == pytest.approx([gray(0), gray(4), gray(7)], abs=6)


def test_max_side_and_sex_option(tmp_path):
    write_video(tmp_path / "patient_7_L1.mp4", size=32)
    (tmp_path / "clinical_variables.csv").write_text("patient_id,cov_test,pat_sex,pat_age\n7,0,1,40\n")
    rows = read(tmp_path, BuildSummary("covid_blues"), max_side=8, include_sex=False)
    assert Image.open(io.BytesIO(rows[0]["image"]["bytes"])).size == (8, 8)
    assert (rows[0]["age"], rows[0]["sex"]) == (40, None)


def test_build_dataset_keeps_patients_together(release):
    dataset, summary = build_dataset("covid_blues", release, test_size=0.5, seed=1, return_summary=True)
    train, test = set(dataset["train"]["patient_id"]), set(dataset["test"]["patient_id"])
    assert train and test and not train & test
    assert summary.rows == 3 and summary.patients["train"] + summary.patients["test"] == 2
    assert dataset["train"][0]["image"].size == (16, 16)


def test_missing_label_table_names_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="clinical_variables.csv") as err:
        read(tmp_path, BuildSummary("covid_blues"))
    assert str(tmp_path) in str(err.value)


def test_missing_column_names_column_and_file(tmp_path):
    (tmp_path / "clinical_variables.csv").write_text("patient_id,pat_age\n1,50\n")
    with pytest.raises(ValueError, match="'cov_test'") as err:
        read(tmp_path, BuildSummary("covid_blues"))
    assert "clinical_variables.csv" in str(err.value) and "'pat_age'" in str(err.value)


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_frames_per_video_must_be_positive_int(release, count):
    with pytest.raises(ValueError, match="frames_per_video"):
        read(release, BuildSummary("covid_blues"), frames_per_video=count)


def test_sample_indices():
    assert sample_indices(8, 1) == [4]
    assert sample_indices(8, 3) == [0, 4, 7]
    assert sample_indices(2, 5) == [0, 1]
    assert sample_indices(0, 1) == []
