"""Hemorrhage (CT-ICH) builder on a tiny tree in the PhysioNet ct-ich 1.0.0 JPEG layout."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fair_trl.data import build_dataset
from fair_trl.data.hemorrhage import read
from fair_trl.data.schema import BuildSummary

DIAGNOSIS_HEADER = [
    "PatientNumber",
    "SliceNumber",
    "Intraventricular",
    "Intraparenchymal",
    "Subarachnoid",
    "Epidural",
    "Subdural",
    "No_Hemorrhage",
    "Fracture_Yes_No",
]
# The release's demographics file: a quoted multi-line header cell and a second header row of sub-types.
DEMOGRAPHICS = (
    'Patient Number,"Age\n(years)",Gender,Hemorrhage type based on the radiologists diagnosis,,,,,'
    "Fracture (yes 1/no 0),Condition on file,Note1\n"
    ",,,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,,,\n"
    "49,35,Male,0,1,0,0,0,1,,\n"
    "50,,Female,0,0,0,0,0,0,,\n"
    "51,0,unknown,0,0,0,0,0,0,,\n"
    "52,4 months,Female,0,0,0,0,0,0,,\n"
    "54,43,Male,0,0,0,0,0,0,,\n"
)


def jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def diagnosis_row(patient, slice_number, no_hemorrhage, subdural=0):
    return [patient, slice_number, 0, 0, 0, 0, subdural, no_hemorrhage, 0]


def write_release(root: Path, diagnosis_name="hemorrhage_diagnosis.csv") -> Path:
    ct = root / "Patients_CT"
    for patient, slices in {"049": (1, 2), "050": (1,), "052": (1,), "053": (1,), "054": (1,)}.items():
        for number in slices:
            jpeg(ct / patient / "brain" / f"{number}.jpg", 40)
            if patient != "050":  # patient 50 lacks its bone-window images
                jpeg(ct / patient / "bone" / f"{number}.jpg", 200)
    jpeg(ct / "049" / "brain" / "2_HGE_Seg.jpg", 255)  # segmentation mask, not a slice
    with open(root / diagnosis_name, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(DIAGNOSIS_HEADER)
        writer.writerows(
            [
                diagnosis_row(49, 1, 1),
                diagnosis_row(49, 2, 0, subdural=1),
                diagnosis_row(50, 1, 1),
                diagnosis_row(51, 1, 0),  # no image on disk
                diagnosis_row(52, 1, "x"),  # unreadable label
                diagnosis_row(53, 1, 0),  # not in the demographics file
                diagnosis_row(54, 1, "1.0"),
            ]
        )
    (root / "patient_demographics.csv").write_text(DEMOGRAPHICS)
    return root


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_release(tmp_path)


def test_brain_window_rows_labels_and_demographics(release):
    summary = BuildSummary("hemorrhage")
    rows = read(release, summary)
    assert [(r["patient_id"], r["solution"]) for r in rows] == [
        ("049", "No Hemorrhage"),
        ("049", "Has Hemorrhage"),
        ("050", "No Hemorrhage"),
        ("053", "Has Hemorrhage"),
        ("054", "No Hemorrhage"),
    ]
    assert [r["age"] for r in rows] == [35, 35, None, None, 43]
    assert [r["sex"] for r in rows] == ["M", "M", "F", None, "M"]
    assert rows[1]["image"] == str((release / "Patients_CT" / "049" / "brain" / "2.jpg").resolve())
    assert all(Path(r["image"]).is_absolute() and "HGE" not in r["image"] for r in rows)
    assert dict(summary.skipped) == {"missing_image": 1, "unknown_label": 1}
    assert summary.missing["age"] == 2 and summary.missing["gender"] == 1


def test_infant_age_in_months_is_one_year(tmp_path):
    root = write_release(tmp_path)
    with open(root / "hemorrhage_diagnosis.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(diagnosis_row(52, 1, 1))
    rows = read(root, BuildSummary("hemorrhage"))
    assert [(r["patient_id"], r["age"], r["sex"]) for r in rows if r["patient_id"] == "052"] == [("052", 1, "F")]


def test_bone_and_both_windows(release):
    summary = BuildSummary("hemorrhage")
    bone = read(release, summary, window="bone")
    assert [r["patient_id"] for r in bone] == ["049", "049", "053", "054"]
    assert all(Path(r["image"]).parent.name == "bone" for r in bone)
    assert summary.skipped["missing_image"] == 2  # patient 51, and patient 50's bone slice

    both = read(release, BuildSummary("hemorrhage"), window="both")
    assert len(both) == 4 and all("image" not in r for r in both)
    assert [Path(p).parent.name for p in both[0]["images"]] == ["brain", "bone"]


def test_build_dataset_multi_image_and_patient_split(release):
    dataset, summary = build_dataset("hemorrhage", release, window="both", test_size=0.5, return_summary=True)
    train, test = set(dataset["train"]["patient_id"]), set(dataset["test"]["patient_id"])
    assert train and test and not train & test
    example = dataset["train"][0]
    assert len(example["images"]) == 2
    assert sum(1 for part in example["prompt"][0]["content"] if part["type"] == "image") == 2
    brain, bone = (np.asarray(image.convert("L")).mean() for image in example["images"])
    assert abs(brain - 40) < 3 and abs(bone - 200) < 3
    assert summary.labels == {"No Hemorrhage": 2, "Has Hemorrhage": 2}


def test_file_name_variants_and_nested_folder(tmp_path):
    nested = tmp_path / "computed-tomography-images-1.0.0"
    nested.mkdir()
    write_release(nested, diagnosis_name="hemorrhage_diagnosis_raw_ct.csv")
    (nested / "patient_demographics.csv").rename(nested / "Patient_demographics.csv")
    rows = read(tmp_path, BuildSummary("hemorrhage"))
    assert len(rows) == 5


def test_missing_diagnosis_file_names_file_and_folder(tmp_path):
    (tmp_path / "patient_demographics.csv").write_text(DEMOGRAPHICS)
    with pytest.raises(FileNotFoundError, match="hemorrhage_diagnosis.csv") as err:
        read(tmp_path, BuildSummary("hemorrhage"))
    assert str(tmp_path) in str(err.value)


def test_missing_demographics_file(release):
    (release / "patient_demographics.csv").unlink()
    with pytest.raises(FileNotFoundError, match="patient_demographics.csv"):
        read(release, BuildSummary("hemorrhage"))


def test_missing_label_column(release):
    path = release / "hemorrhage_diagnosis.csv"
    path.write_text("PatientNumber,SliceNumber,Hemorrhage\n49,1,0\n")
    with pytest.raises(ValueError, match="'No_Hemorrhage'") as err:
        read(release, BuildSummary("hemorrhage"))
    assert "hemorrhage_diagnosis.csv" in str(err.value) and "'Hemorrhage'" in str(err.value)


def test_demographics_without_gender_column(release):
    (release / "patient_demographics.csv").write_text("Patient Number,Age\n49,35\n")
    with pytest.raises(ValueError, match="'Gender'"):
        read(release, BuildSummary("hemorrhage"))


def test_nifti_only_release_is_explained(tmp_path):
    write_release(tmp_path)
    for path in sorted((tmp_path / "Patients_CT").rglob("*.jpg")):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="NIfTI"):
        read(tmp_path, BuildSummary("hemorrhage"))


def test_invalid_window(release):
    with pytest.raises(ValueError, match="window"):
        read(release, BuildSummary("hemorrhage"), window="soft")
