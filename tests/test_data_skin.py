"""HAM10000, ISIC 2020 and PAD-UFES-20 builders on tiny trees in each public release's layout."""

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fair_trl.data import build_dataset, ham10000, isic2020, pad_ufes20
from fair_trl.data._release import ImageIndex, locate_file, read_csv
from fair_trl.data.schema import BuildSummary


def _write_csv(path: Path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _write_image(path: Path, size=(6, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color=(200, 120, 90)).save(path)


def _stem(row):
    return Path(row["image"]).stem


def _assert_patient_disjoint(dataset):
    train, test = set(dataset["train"]["patient_id"]), set(dataset["test"]["patient_id"])
    assert train and test and not train & test


# ----------------------------------------------------------------------------------------------- HAM10000

HAM_HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
HAM_ROWS = [
    # lesion, image, dx, dx_type, age, sex, part folder (None = image file missing)
    ("HAM_0000118", "ISIC_0027419", "bkl", "histo", "80.0", "male", 1),
    ("HAM_0000118", "ISIC_0025030", "bkl", "histo", "80.0", "male", 2),  # same lesion, other part folder
    ("HAM_0002730", "ISIC_0026769", "mel", "histo", "", "female", 1),  # blank age
    ("HAM_0001466", "ISIC_0031633", "nv", "follow_up", "0.0", "unknown", 2),  # age 0, sex unknown
    ("HAM_0002761", "ISIC_0029176", "akiec", "histo", "45.0", "female", 1),
    ("HAM_0005132", "ISIC_0025837", "bcc", "histo", "60.0", "male", 2),
    ("HAM_0001396", "ISIC_0025276", "df", "consensus", "35.0", "female", 1),
    ("HAM_0004234", "ISIC_0029396", "vasc", "consensus", "55.0", "Male", 1),
    ("HAM_0006000", "ISIC_0030000", "mel", "histo", "50.0", "female", None),  # image missing
    ("HAM_0006001", "ISIC_0030001", "scc", "histo", "50.0", "female", 1),  # not a HAM10000 class
    ("HAM_0006002", "ISIC_0030002", "nv", "histo", "200", "other", 2),  # invalid age and sex
]


@pytest.fixture()
def ham_release(tmp_path):
    release = tmp_path / "HAM10000"
    _write_csv(release / "HAM10000_metadata.csv", HAM_HEADER, [(*r[:6], "scalp") for r in HAM_ROWS])
    for _lesion, image, *_, part in HAM_ROWS:
        if part is not None:
            _write_image(release / f"HAM10000_images_part_{part}" / f"{image}.jpg")
    return release


def test_ham10000_labels_demographics_and_summary(ham_release):
    summary = BuildSummary("ham10000")
    rows = {_stem(row): row for row in ham10000.read(ham_release, summary)}
    assert {name: row["solution"] for name, row in rows.items()} == {
        "ISIC_0027419": "OTHER",
        "ISIC_0025030": "OTHER",
        "ISIC_0026769": "MEL",
        "ISIC_0031633": "NV",
        "ISIC_0029176": "AKIEC",
        "ISIC_0025837": "BCC",
        "ISIC_0025276": "OTHER",
        "ISIC_0029396": "OTHER",
        "ISIC_0030002": "NV",
    }
    assert rows["ISIC_0027419"]["patient_id"] == rows["ISIC_0025030"]["patient_id"] == "HAM_0000118"
    assert (rows["ISIC_0027419"]["age"], rows["ISIC_0027419"]["sex"]) == (80, "M")
    assert (rows["ISIC_0026769"]["age"], rows["ISIC_0026769"]["sex"]) == (None, "F")
    assert (rows["ISIC_0031633"]["age"], rows["ISIC_0031633"]["sex"]) == (None, None)
    assert rows["ISIC_0029396"]["sex"] == "M"  # "Male"
    assert (rows["ISIC_0030002"]["age"], rows["ISIC_0030002"]["sex"]) == (None, None)
    assert "HAM10000_images_part_2" in rows["ISIC_0025030"]["image"] and Path(rows["ISIC_0025030"]["image"]).is_file()
    assert summary.skipped == {"missing_image": 1, "unknown_label": 1}
    assert summary.missing == {"age": 2, "sex": 1}
    assert summary.invalid == {"age": 1, "sex": 1}


def test_ham10000_build_dataset_from_parent_folder(ham_release, tmp_path):
    dataset, summary = build_dataset("ham10000", tmp_path, test_size=0.3, seed=0, return_summary=True)
    _assert_patient_disjoint(dataset)
    assert summary.rows == 9 and summary.splits["train"] + summary.splits["test"] == 9
    assert summary.labels == {"OTHER": 4, "NV": 2, "MEL": 1, "AKIEC": 1, "BCC": 1}
    sides = {pid: side for side in ("train", "test") for pid in dataset[side]["patient_id"]}
    assert len(sides) == 8  # 9 images of 8 lesions; the two images of HAM_0000118 share a side
    image = dataset["train"][0]["image"]
    assert isinstance(image, Image.Image) and image.size == (6, 4)


def test_ham10000_errors_name_the_file_and_column(tmp_path, ham_release):
    with pytest.raises(FileNotFoundError, match="HAM10000_metadata.csv") as err:
        ham10000.read(tmp_path / "nowhere", BuildSummary("ham10000"))
    assert "nowhere" in str(err.value)
    _write_csv(
        ham_release / "HAM10000_metadata.csv", ["lesion_id", "image_id", "diagnosis", "age", "sex"], [HAM_ROWS[0][:5]]
    )
    with pytest.raises(ValueError, match=r"\['dx'\]") as err:
        ham10000.read(ham_release, BuildSummary("ham10000"))
    assert "HAM10000_metadata.csv" in str(err.value) and "'diagnosis'" in str(err.value)
    with pytest.raises(ValueError, match="data directory is required"):
        ham10000.read(None, BuildSummary("ham10000"))


# ----------------------------------------------------------------------------------------------- ISIC 2020

ISIC_HEADER = [
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
]
ISIC_ROWS = [
    ["ISIC_2637011", "IP_7279968", "male", "45.0", "head/neck", "unknown", "benign", "0"],
    ["ISIC_0015719", "IP_3075186", "female", "45.0", "upper extremity", "melanoma", "malignant", "1"],
    ["ISIC_0052212", "IP_2842074", "female", "", "lower extremity", "nevus", "benign", "0"],  # blank age
    ["ISIC_0068279", "IP_6890425", "", "45.0", "head/neck", "unknown", "benign", "0"],  # blank sex
    ["ISIC_0074268", "IP_8723313", "female", "55.0", "upper extremity", "melanoma", "malignant", ""],  # no target
    ["ISIC_0074311", "IP_2950485", "female", "40.0", "lower extremity", "unknown", "", "7"],  # bad label
    ["ISIC_0074542", "IP_4698288", "male", "25.0", "lower extremity", "unknown", "benign", "0"],  # image missing
    ["ISIC_0075663", "IP_7279968", "male", "45.0", "torso", "unknown", "benign", "0"],  # same patient as row 0
]


def _isic_kaggle(root: Path, rows=ISIC_ROWS):
    _write_csv(root / "train.csv", ISIC_HEADER, rows)
    for row in rows:
        if row[0] != "ISIC_0074542":
            _write_image(root / "jpeg" / "train" / f"{row[0]}.jpg")
    _write_image(root / "jpeg" / "test" / "ISIC_9999999.jpg")  # test images are not in train.csv
    return root


def test_isic2020_kaggle_layout_labels_and_demographics(tmp_path):
    summary = BuildSummary("isic2020")
    rows = {_stem(row): row for row in isic2020.read(_isic_kaggle(tmp_path / "kaggle"), summary)}
    assert {name: row["solution"] for name, row in rows.items()} == {
        "ISIC_2637011": "Benign",
        "ISIC_0015719": "Malignant",
        "ISIC_0052212": "Benign",
        "ISIC_0068279": "Benign",
        "ISIC_0074268": "Malignant",  # from benign_malignant
        "ISIC_0075663": "Benign",
    }
    assert rows["ISIC_0015719"] | {"image": None} == {
        "image": None,
        "solution": "Malignant",
        "dataset": "isic2020",
        "patient_id": "IP_3075186",
        "age": 45,
        "sex": "F",
    }
    assert rows["ISIC_0052212"]["age"] is None and rows["ISIC_0068279"]["sex"] is None
    assert summary.skipped == {"unknown_label": 1, "missing_image": 1}
    assert summary.missing == {"age_approx": 1, "sex": 1}


def test_isic2020_archive_layout_v2_csv_and_split(tmp_path):
    root = tmp_path / "isic"
    header = ISIC_HEADER[:2] + ["lesion_id"] + ISIC_HEADER[2:]
    rows = [[*row[:2], f"IL_{i}", *row[2:]] for i, row in enumerate(ISIC_ROWS)]
    _write_csv(root / "ISIC_2020_Training_GroundTruth_v2.csv", header, rows)
    for row in ISIC_ROWS[:5]:
        _write_image(root / "ISIC_2020_Training_JPEG" / "train" / f"{row[0]}.jpg")
    _write_image(root / "ISIC_2020_Training_JPEG" / "train" / "ISIC_0075663.JPG")  # suffix case differs
    dataset, summary = build_dataset("isic2020", tmp_path, test_size=0.4, seed=0, return_summary=True)
    _assert_patient_disjoint(dataset)
    assert summary.rows == 6 and summary.labels == {"Benign": 4, "Malignant": 2}
    sides = {pid: side for side in ("train", "test") for pid in dataset[side]["patient_id"]}
    assert len(sides) == 5
    assert all(isinstance(row["image"], Image.Image) for row in dataset["test"])


def test_isic2020_decodes_dicom_when_no_jpeg(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    root = tmp_path / "kaggle"
    _write_csv(root / "train.csv", ISIC_HEADER, [ISIC_ROWS[1], ISIC_ROWS[0]])
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"  # VL photographic image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 20, 40, 3, "RGB"
    ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 0, 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    (root / "train").mkdir()
    ds.save_as(root / "train" / "ISIC_0015719.dcm", enforce_file_format=True)
    (root / "train" / "ISIC_2637011.dcm").write_bytes(b"not a dicom file")

    summary = BuildSummary("isic2020")
    rows = isic2020.read(root, summary, max_side=10)
    assert len(rows) == 1 and rows[0]["solution"] == "Malignant"
    image = Image.open(io.BytesIO(rows[0]["image"]["bytes"]))
    assert image.size == (10, 5)
    assert image.convert("RGB").getpixel((1, 2)) == (255, 0, 0) and image.convert("RGB").getpixel((8, 2)) == (0, 0, 0)
    assert summary.skipped == {"unreadable_image": 1}
    with pytest.raises(ValueError, match="max_side"):
        isic2020.read(root, BuildSummary("isic2020"), max_side=0)


def test_isic2020_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        isic2020.read(tmp_path, BuildSummary("isic2020"))
    message = str(err.value)
    assert "train.csv" in message and "ISIC_2020_Training_GroundTruth.csv" in message and str(tmp_path) in message

    _write_csv(tmp_path / "train.csv", ISIC_HEADER[:4], [ISIC_ROWS[0][:4]])
    with pytest.raises(ValueError, match="'target' or 'benign_malignant'") as err:
        isic2020.read(tmp_path, BuildSummary("isic2020"))
    assert "train.csv" in str(err.value)
    _write_csv(tmp_path / "train.csv", ["image_name", "sex", "age_approx", "target"], [["ISIC_1", "male", "40", "0"]])
    with pytest.raises(ValueError, match=r"\['patient_id'\]"):
        isic2020.read(tmp_path, BuildSummary("isic2020"))


# ----------------------------------------------------------------------------------------------- PAD-UFES-20

PAD_HEADER = (
    "patient_id lesion_id smoke drink background_father background_mother age pesticide gender "
    "skin_cancer_history cancer_history has_piped_water has_sewage_system fitspatrick region diameter_1 "
    "diameter_2 diagnostic itch grew hurt changed bleed elevation img_id biopsed"
).split()
PAD_ROWS = [
    # patient, lesion, age, gender, diagnostic, img_id, part (None = image missing)
    ("PAT_1516", "1765", "8", "", "NEV", "PAT_1516_1765_530.png", 1),  # blank gender
    ("PAT_46", "881", "55", "FEMALE", "BCC", "PAT_46_881_939.png", 1),
    ("PAT_46", "882", "55", "FEMALE", "ACK", "PAT_46_882_940.png", 2),  # same patient, other lesion
    ("PAT_1545", "1867", "77", "MALE", "SCC", "PAT_1545_1867_547.png", 2),
    ("PAT_1989", "4061", "75", "", "SEK", "PAT_1989_4061_934.png", 3),
    ("PAT_684", "1302", "", "MALE", "MEL", "PAT_684_1302_588.png", 3),  # blank age
    ("PAT_795", "1508", "79", "MALE", "BCC", "PAT_795_1508_925.png", None),  # image missing
    ("PAT_12", "13", "64", "FEMALE", "XYZ", "PAT_12_13_1.png", 1),  # unknown diagnostic
]


def _pad_row(patient, lesion, age, gender, diagnostic, img_id):
    row = dict.fromkeys(PAD_HEADER, "")
    row.update(patient_id=patient, lesion_id=lesion, age=age, gender=gender, diagnostic=diagnostic, img_id=img_id)
    row.update(fitspatrick="2.0", region="FACE", biopsed="True")
    return [row[name] for name in PAD_HEADER]


@pytest.fixture()
def pad_release(tmp_path):
    release = tmp_path / "PAD-UFES-20"
    _write_csv(release / "metadata.csv", PAD_HEADER, [_pad_row(*r[:6]) for r in PAD_ROWS])
    for *_, img_id, part in PAD_ROWS:
        if part is not None:
            _write_image(release / "images" / f"imgs_part_{part}" / img_id)
    return release


def test_pad_ufes20_labels_demographics_and_summary(pad_release):
    summary = BuildSummary("pad_ufes20")
    rows = {Path(row["image"]).name: row for row in pad_ufes20.read(pad_release, summary)}
    assert {name: row["solution"] for name, row in rows.items()} == {
        "PAT_1516_1765_530.png": "NV",
        "PAT_46_881_939.png": "BCC",
        "PAT_46_882_940.png": "AKIEC",
        "PAT_1545_1867_547.png": "AKIEC",  # SCC -> AKIEC by default
        "PAT_1989_4061_934.png": "OTHER",
        "PAT_684_1302_588.png": "MEL",
    }
    assert rows["PAT_46_881_939.png"] | {"image": None} == {
        "image": None,
        "solution": "BCC",
        "dataset": "pad_ufes20",
        "patient_id": "PAT_46",
        "age": 55,
        "sex": "F",
    }
    assert (rows["PAT_1516_1765_530.png"]["age"], rows["PAT_1516_1765_530.png"]["sex"]) == (8, None)
    assert (rows["PAT_684_1302_588.png"]["age"], rows["PAT_684_1302_588.png"]["sex"]) == (None, "M")
    assert summary.skipped == {"missing_image": 1, "unknown_label": 1}
    assert summary.missing == {"age": 1, "gender": 2}


def test_pad_ufes20_scc_label_option(pad_release):
    rows = {
        Path(r["image"]).name: r["solution"] for r in pad_ufes20.read(pad_release, BuildSummary("p"), scc_label="OTHER")
    }
    assert rows["PAT_1545_1867_547.png"] == "OTHER" and rows["PAT_46_882_940.png"] == "AKIEC"
    with pytest.raises(ValueError, match="scc_label must be one of"):
        pad_ufes20.read(pad_release, BuildSummary("p"), scc_label="SCC")
    with pytest.raises(TypeError):
        build_dataset("pad_ufes20", pad_release, scc="OTHER")


def test_pad_ufes20_build_dataset_keeps_patients_together(pad_release):
    dataset, summary = build_dataset("pad_ufes20", pad_release, test_size=0.4, seed=3, return_summary=True)
    _assert_patient_disjoint(dataset)
    assert summary.rows == 6 and summary.patients["train"] + summary.patients["test"] == 5
    for split in dataset.values():
        for row in split:
            assert isinstance(row["image"], Image.Image) and row["image"].size == (6, 4)


def test_pad_ufes20_errors(tmp_path, pad_release):
    with pytest.raises(FileNotFoundError, match="metadata.csv") as err:
        pad_ufes20.read(tmp_path / "empty", BuildSummary("p"))
    assert "empty" in str(err.value) and "does not exist" in str(err.value)
    _write_csv(pad_release / "metadata.csv", ["patient_id", "img_id", "diagnostic", "age", "sex"], [])
    with pytest.raises(ValueError, match=r"\['gender'\]") as err:
        pad_ufes20.read(pad_release, BuildSummary("p"))
    assert "metadata.csv" in str(err.value) and "'sex'" in str(err.value)


# ----------------------------------------------------------------------------------------------- shared helpers


def test_release_helpers(tmp_path):
    _write_csv(tmp_path / "a" / "meta.csv", ["\ufeffid", " label "], [["1", " x "], [], ["2"]])
    assert locate_file(tmp_path, ["missing.csv", "meta.csv"]) == tmp_path / "a" / "meta.csv"
    assert read_csv(tmp_path / "a" / "meta.csv", ["id", "label"]) == [
        {"id": "1", "label": "x"},
        {"id": "2", "label": ""},
    ]
    _write_image(tmp_path / "a" / "deep" / "er" / "IMG_1.PNG")
    (tmp_path / "a" / "notes.txt").write_text("x")
    index = ImageIndex(tmp_path, (".png", "jpg"))
    assert len(index) == 1
    assert index.find("img_1") == index.get("IMG_1.png") == tmp_path / "a" / "deep" / "er" / "IMG_1.PNG"
    assert index.find("IMG_1", (".jpg",)) is None
