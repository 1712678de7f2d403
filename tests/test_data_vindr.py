"""VinDr-Mammo builder on a tiny PhysioNet-layout tree with real (uncompressed) DICOM files."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)

from fair_trl.data import build_dataset  # noqa: E402
from fair_trl.data._media import _decoder_available  # noqa: E402
from fair_trl.data.schema import BuildSummary  # noqa: E402
from fair_trl.data.vindr_mammo import parse_birads, read  # noqa: E402

HEADER = [
    "study_id",
    "series_id",
    "image_id",
    "laterality",
    "view_position",
    "height",
    "width",
    "breast_birads",
    "breast_density",
    "split",
]
PIXELS = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)


def write_dicom(
    path: Path, pixels=PIXELS, *, photometric="MONOCHROME2", age=None, sex=None, window=None, jpeg_ls=False
):
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGLSLossless if jpeg_ls else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if age is not None:
        ds.PatientAge = age
    if sex is not None:
        ds.PatientSex = sex
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if jpeg_ls:
        ds.PixelData = encapsulate([b"\xff\xd8not really jpeg-ls\xff\xd9"])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_csv(path: Path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def annotation(study, image, birads):
    return [study, f"ser-{study}", image, "L", "CC", 2, 2, birads, "DENSITY C", "training"]


def decoded(value) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(value["bytes"])))


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A VinDr-Mammo tree with the dirty cases real downloads have."""
    root = tmp_path / "vindr-mammo" / "1.0.0"
    images = root / "images"
    write_dicom(images / "s1" / "i1.dicom", sex="F")
    write_dicom(images / "s1" / "i2.dicom", photometric="MONOCHROME1", age="061Y", sex="F")
    write_dicom(images / "s2" / "i3.dicom", window=(1500, 1001), sex="F")
    (images / "s3").mkdir(parents=True)
    (images / "s3" / "i6.dicom").write_bytes(b"not a dicom file")
    write_dicom(images / "s4" / "i7.dicom", jpeg_ls=True)
    write_dicom(root / "images_part2" / "s5" / "i8.dcm", age="045Y")  # a second part folder, .dcm
    write_csv(
        root / "breast-level_annotations.csv",
        HEADER,
        [
            annotation("s1", "i1", "BI-RADS 1"),
            annotation("s1", "i2", "BI-RADS 4"),
            annotation("s2", "i3", "BI-RADS 2"),
            annotation("s2", "i4", "BI-RADS 5"),  # DICOM missing on disk
            annotation("s3", "i5", "BI-RADS 0"),  # not one of the five labels
            annotation("s3", "i6", "BI-RADS 3"),  # unreadable file
            annotation("s4", "i7", "BI-RADS 2"),  # compressed without a decoder
            annotation("s5", "i8", "BI-RADS 3"),
        ],
    )
    write_csv(
        root / "metadata.csv",
        ["Series Instance UID", "SOP Instance UID", "Patient's Age", "View Position", "Photometric Interpretation"],
        [
            ["ser-s1", "i1", "053Y", "CC", "MONOCHROME2"],
            ["ser-s1", "i2", "", "CC", "MONOCHROME1"],  # blank: fall back to the DICOM header (061Y)
            ["ser-s2", "i3", "000Y", "CC", "MONOCHROME2"],  # placeholder for "not recorded"
            ["ser-s5", "i8", "", "CC", "MONOCHROME2"],
        ],
    )
    return tmp_path


needs_no_jpegls = pytest.mark.skipif(
    _decoder_available(JPEGLSLossless), reason="a JPEG-LS decoder is installed, so the codec cannot be missing"
)


@needs_no_jpegls
def test_rows_labels_demographics_and_skips(release, caplog):
    summary = BuildSummary("vindr_mammo")
    with caplog.at_level(logging.WARNING):
        rows = read(release, summary)
    assert [r["solution"] for r in rows] == ["BI-RADS 1", "BI-RADS 4", "BI-RADS 2", "BI-RADS 3"]
    assert [r["patient_id"] for r in rows] == ["s1", "s1", "s2", "s5"]
    assert [r["age"] for r in rows] == [53, 61, None, 45]
    assert [r["sex"] for r in rows] == ["F", "F", "F", None]
    assert {r["dataset"] for r in rows} == {"vindr_mammo"}
    assert dict(summary.skipped) == {
        "missing_image": 1,
        "unknown_label": 1,
        "unreadable_dicom": 1,
        "missing_codec (pyjpegls)": 1,
    }
    assert summary.missing["Patient's Age"] == 1
    assert summary.missing["Patient's Sex"] == 1
    assert "pip install pyjpegls" in caplog.text


@needs_no_jpegls
def test_pixels_are_windowed_inverted_and_downscaled(release, tmp_path):
    rows = read(release, BuildSummary("vindr_mammo"))
    plain, inverted, windowed = (decoded(r["image"]) for r in rows[:3])
    np.testing.assert_array_equal(plain, [[0, 64], [128, 255]])
    np.testing.assert_array_equal(inverted, [[255, 191], [127, 0]])  # MONOCHROME1: low values are bright
    np.testing.assert_array_equal(windowed, [[0, 0], [255, 255]])  # window 1000-2000 clips both ends

    big = np.tile(np.arange(40, dtype=np.uint16) * 100, (20, 1))
    write_dicom(release / "vindr-mammo" / "1.0.0" / "images" / "s1" / "i1.dicom", big)
    rows = read(release, BuildSummary("vindr_mammo"), max_side=10)
    assert decoded(rows[0]["image"]).shape == (5, 10)
    rows = read(release, BuildSummary("vindr_mammo"), max_side=None)
    assert decoded(rows[0]["image"]).shape == (20, 40)


@needs_no_jpegls
def test_build_dataset_splits_by_study(release):
    dataset, summary = build_dataset("vindr_mammo", release, test_size=0.5, seed=3, return_summary=True)
    train, test = set(dataset["train"]["patient_id"]), set(dataset["test"]["patient_id"])
    assert train and test and not train & test
    assert summary.rows == 4 and summary.splits["train"] + summary.splits["test"] == 4
    assert summary.labels["BI-RADS 3"] == 1
    example = dataset["train"][0]
    assert example["image"].mode == "L"
    assert "BI-RADS 5" in example["prompt"][0]["content"][-1]["text"]


def test_age_falls_back_to_dicom_header_without_metadata(tmp_path):
    write_dicom(tmp_path / "images" / "s9" / "a.dicom", age="072Y", sex="F")
    write_dicom(tmp_path / "images" / "s9" / "b.dicom", age="", sex="")
    write_csv(
        tmp_path / "breast-level_annotations.csv",
        HEADER,
        [annotation("s9", "a", "BIRADS 2"), annotation("s9", "b", "4A")],
    )
    summary = BuildSummary("vindr_mammo")
    rows = read(tmp_path, summary, assume_female=True)
    assert [(r["solution"], r["age"], r["sex"]) for r in rows] == [("BI-RADS 2", 72, "F"), ("BI-RADS 4", None, "F")]
    assert summary.missing["Patient's Age"] == 1 and summary.missing["Patient's Sex"] == 0


@needs_no_jpegls
def test_only_undecodable_files_names_the_package(tmp_path):
    write_dicom(tmp_path / "images" / "s1" / "a.dicom", jpeg_ls=True)
    write_csv(tmp_path / "breast-level_annotations.csv", HEADER, [annotation("s1", "a", "BI-RADS 1")])
    with pytest.raises(RuntimeError, match="pip install pyjpegls"):
        read(tmp_path, BuildSummary("vindr_mammo"))


def test_missing_annotation_file_names_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="breast-level_annotations.csv") as err:
        read(tmp_path, BuildSummary("vindr_mammo"))
    assert str(tmp_path) in str(err.value)


def test_missing_column_names_column_file_and_header(tmp_path):
    write_csv(tmp_path / "breast-level_annotations.csv", ["study_id", "image_id", "birads"], [["s", "i", "BI-RADS 1"]])
    with pytest.raises(ValueError, match="'breast_birads'") as err:
        read(tmp_path, BuildSummary("vindr_mammo"))
    assert "breast-level_annotations.csv" in str(err.value) and "'birads'" in str(err.value)


def test_metadata_without_age_column_is_an_error(tmp_path):
    write_csv(tmp_path / "breast-level_annotations.csv", HEADER, [annotation("s", "i", "BI-RADS 1")])
    write_csv(tmp_path / "metadata.csv", ["SOP Instance UID", "PatientAge"], [["i", "050Y"]])
    with pytest.raises(ValueError, match='"Patient\'s Age"') as err:
        read(tmp_path, BuildSummary("vindr_mammo"))
    assert "metadata.csv" in str(err.value)


def test_unknown_option_is_rejected(release):
    with pytest.raises(TypeError):
        read(release, BuildSummary("vindr_mammo"), window="brain")


@pytest.mark.parametrize(
    ("text", "label"),
    [("BI-RADS 1", "BI-RADS 1"), ("bi-rads 5", "BI-RADS 5"), ("BIRADS 3", "BI-RADS 3"), ("4", "BI-RADS 4")],
)
def test_parse_birads_accepts_spellings(text, label):
    assert parse_birads(text) == label


@pytest.mark.parametrize("text", ["BI-RADS 0", "BI-RADS 6", "", "DENSITY A", "BI-RADS 12"])
def test_parse_birads_rejects_other_values(text):
    assert parse_birads(text) is None
