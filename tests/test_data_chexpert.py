"""CheXpert builder on a tiny tree in the public release's layout (CheXpert-v1.0-small)."""

import csv
import shutil

import pytest
from PIL import Image

from fair_trl.data import build_dataset
from fair_trl.data.chexpert import OBSERVATIONS, read
from fair_trl.data.schema import BuildSummary

RELEASE = "CheXpert-v1.0-small"
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *sorted(OBSERVATIONS, key=lambda o: o != "No Finding")]


def _row(split, patient, view, sex, age, frontal="Frontal", missing_image=False, **labels):
    path = f"{RELEASE}/{split}/patient{patient:05d}/study1/{view}.jpg"
    row = {
        "Path": path,
        "Sex": sex,
        "Age": age,
        "Frontal/Lateral": frontal,
        "AP/PA": "AP" if frontal == "Frontal" else "",
    }
    for observation in OBSERVATIONS:
        row[observation] = labels.get(observation.replace(" ", "_"), "")
    return row, (None if missing_image else path)


# (row, image path or None). Label cells use the release's spellings: "1.0", "0.0", "-1.0", blank.
TRAIN = [
    _row("train", 1, "view1_frontal", "Female", "68", Cardiomegaly="1.0", Edema="-1.0", Pleural_Effusion="0.0"),
    _row("train", 1, "view2_lateral", "Female", "68", frontal="Lateral", No_Finding="1.0"),
    _row("train", 2, "view1_frontal", "Male", "0", Atelectasis="-1.0"),
    _row("train", 3, "view1_frontal", "Unknown", "45", Support_Devices="1.0", Pneumonia="1.0", Lung_Opacity="1.0"),
    _row("train", 4, "view1_frontal", "Male", "70", missing_image=True, Fracture="1.0"),
    _row("train", 5, "view1_frontal", "Female", "33", Edema="x"),
    *[_row("train", p, "view1_frontal", "Male", str(20 + p), Consolidation="1.0") for p in range(6, 14)],
]
VALID = [
    _row("valid", 64541, "view1_frontal", "Female", "55", Edema="1.0", Pleural_Effusion="1.0", Cardiomegaly="0.0"),
]


def _write_release(parent, rows_by_file=None, header=HEADER):
    release = parent / RELEASE
    release.mkdir(parents=True)
    rows_by_file = rows_by_file or {"train.csv": TRAIN, "valid.csv": VALID}
    for filename, rows in rows_by_file.items():
        with open(release / filename, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            for row, image in rows:
                writer.writerow(row)
                if image is not None:
                    target = parent / image
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.new("L", (8, 8), color=len(image) % 256).save(target)
    return release


@pytest.fixture()
def release(tmp_path):
    return _write_release(tmp_path)


def _by_path(rows):
    return {row["image"].split(RELEASE + "/", 1)[1]: row for row in rows}


def test_uncertain_negative_default_labels_and_demographics(release):
    summary = BuildSummary("chexpert")
    rows = _by_path(read(release, summary))
    assert rows["train/patient00001/study1/view1_frontal.jpg"]["solution"] == "Cardiomegaly"
    assert rows["train/patient00001/study1/view2_lateral.jpg"]["solution"] == "No Finding"
    # Only an uncertain finding -> nothing positive -> "No Finding".
    assert rows["train/patient00002/study1/view1_frontal.jpg"]["solution"] == "No Finding"
    # Canonical (alphabetical) order, not the CSV's column order.
    assert rows["train/patient00003/study1/view1_frontal.jpg"]["solution"] == "Lung Opacity, Pneumonia, Support Devices"
    assert rows["valid/patient64541/study1/view1_frontal.jpg"]["solution"] == "Edema, Pleural Effusion"

    first = rows["train/patient00001/study1/view1_frontal.jpg"]
    assert (first["patient_id"], first["age"], first["sex"], first["dataset"]) == ("patient00001", 68, "F", "chexpert")
    assert rows["train/patient00002/study1/view1_frontal.jpg"]["age"] is None  # Age 0 = not recorded
    assert rows["train/patient00003/study1/view1_frontal.jpg"]["sex"] is None  # "Unknown"
    assert rows["valid/patient64541/study1/view1_frontal.jpg"]["patient_id"] == "patient64541"

    assert len(rows) == 13  # 14 train rows + 1 valid row, minus one missing image and one bad label cell
    assert summary.skipped == {"missing_image": 1, "unknown_label": 1}
    assert summary.missing == {"Age": 1, "Sex": 1}
    assert not summary.invalid


def test_uncertain_positive_and_drop_policies_differ(release):
    positive = _by_path(read(release, BuildSummary("chexpert"), uncertain="positive"))
    assert positive["train/patient00001/study1/view1_frontal.jpg"]["solution"] == "Cardiomegaly, Edema"
    assert positive["train/patient00002/study1/view1_frontal.jpg"]["solution"] == "Atelectasis"
    assert positive["train/patient00003/study1/view1_frontal.jpg"]["solution"] == (
        "Lung Opacity, Pneumonia, Support Devices"
    )

    summary = BuildSummary("chexpert")
    dropped = _by_path(read(release, summary, uncertain="drop"))
    assert "train/patient00001/study1/view1_frontal.jpg" not in dropped
    assert "train/patient00002/study1/view1_frontal.jpg" not in dropped
    assert dropped["train/patient00001/study1/view2_lateral.jpg"]["solution"] == "No Finding"
    assert len(dropped) == 11
    assert summary.skipped["uncertain_label"] == 2

    with pytest.raises(ValueError, match="uncertain must be one of"):
        read(release, BuildSummary("chexpert"), uncertain="ones")


def test_frontal_only_skips_lateral_views(release):
    summary = BuildSummary("chexpert")
    rows = read(release, summary, frontal_only=True)
    assert len(rows) == 12
    assert all("lateral" not in row["image"] for row in rows)
    assert summary.skipped["not_frontal"] == 1


def test_paths_resolve_from_release_folder_its_parent_and_a_renamed_folder(release, tmp_path):
    from_release = sorted(row["image"] for row in read(release, BuildSummary("chexpert")))
    from_parent = sorted(row["image"] for row in read(tmp_path, BuildSummary("chexpert")))
    assert from_release == from_parent
    assert len(from_release) == 13
    assert all(Image.open(path).size == (8, 8) for path in from_release)

    renamed = tmp_path / "other" / "chexpert_small"
    renamed.parent.mkdir()
    shutil.move(str(release), str(renamed))  # Path cells still start with "CheXpert-v1.0-small/"
    summary = BuildSummary("chexpert")
    assert len(read(renamed, summary)) == 13
    assert summary.skipped["missing_image"] == 1


def test_build_dataset_splits_by_patient_and_decodes_images(release):
    dataset, summary = build_dataset("chexpert", release, test_size=0.3, seed=1, return_summary=True)
    train_ids = set(dataset["train"]["patient_id"])
    test_ids = set(dataset["test"]["patient_id"])
    assert train_ids and test_ids and not train_ids & test_ids
    assert len(train_ids | test_ids) == 12
    assert dataset["train"].num_rows + dataset["test"].num_rows == summary.rows == 13
    assert summary.labels["Consolidation"] == 8
    example = dataset["test"][0]
    assert isinstance(example["image"], Image.Image) and example["image"].size == (8, 8)
    assert "Pleural Effusion" in example["prompt"][0]["content"][-1]["text"]
    ages = {row["patient_id"]: row["age"] for split in dataset.values() for row in split.remove_columns("image")}
    assert ages["patient00002"] is None and ages["patient00006"] == 26


def test_missing_csv_and_missing_column_errors_name_them(tmp_path, release):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="train.csv") as err:
        read(empty, BuildSummary("chexpert"))
    assert str(empty) in str(err.value)

    (release / "valid.csv").unlink()
    with pytest.raises(FileNotFoundError, match="valid.csv"):
        read(release, BuildSummary("chexpert"))
    assert len(read(release, BuildSummary("chexpert"), csv_files=["train.csv"])) == 12

    with open(release / "train.csv") as handle:
        lines = handle.read().splitlines()
    header = lines[0].replace(",Edema,", ",Oedema,")
    (release / "train.csv").write_text("\n".join([header, *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="Edema") as err:
        read(release, BuildSummary("chexpert"), csv_files=["train.csv"])
    assert "train.csv" in str(err.value) and "Oedema" in str(err.value)


def test_frontal_only_requires_the_view_column(tmp_path):
    rows = [(dict(row), image) for row, image in TRAIN[:3]]
    for row, _ in rows:
        del row["Frontal/Lateral"]
    header = [name for name in HEADER if name != "Frontal/Lateral"]
    release = _write_release(tmp_path, {"train.csv": rows, "valid.csv": []}, header=header)
    assert len(read(release, BuildSummary("chexpert"))) == 3
    with pytest.raises(ValueError, match="Frontal/Lateral"):
        read(release, BuildSummary("chexpert"), frontal_only=True)
