"""PAD-UFES-20 (Pacheco et al., 2020; Mendeley Data zr7vgbcyr2) from its public release.

Layout expected under `data_dir` (the release folder, or a folder holding it as a direct subfolder)::

    metadata.csv       patient_id, lesion_id, smoke, drink, ..., age, ..., gender, ..., fitspatrick, region,
                       diameter_1, diameter_2, diagnostic, itch, grew, hurt, changed, bleed, elevation,
                       img_id, biopsed
    images/imgs_part_1/<img_id>   (img_id already carries its ".png")
    images/imgs_part_2/<img_id>
    images/imgs_part_3/<img_id>

Images are found recursively under the metadata file's folder, so a flat ``images/`` works too. Required
columns: patient_id, img_id, diagnostic, age, gender.

Labels: ``diagnostic`` onto the HAM10000 classes (paper Table 1): ACK (actinic keratosis) -> AKIEC,
BCC -> BCC, MEL -> MEL, NEV -> NV, SEK (seborrheic keratosis) -> OTHER, and SCC -> `scc_label`.

Choice for SCC (squamous cell carcinoma), which has no class of its own: HAM10000's AKIEC class is
"actinic keratoses and intraepithelial carcinoma / Bowen's disease", i.e. SCC *in situ*, and the release
already merged Bowen's disease (BOD) into SCC; AKIEC is therefore the closest class and the default
(``scc_label="AKIEC"``). Pass ``scc_label="OTHER"`` to keep AKIEC for actinic keratoses only. A literal
BOD value (older copies) gets the same label as SCC. Other diagnostic values -> ``skipped["unknown_label"]``.

Demographics: ``age`` (years) and ``gender`` (FEMALE/MALE; blank for the patients whose clinical form was
not filled in, which counts as missing). Patient id: ``patient_id`` (``PAT_...``), so all lesions and
images of one patient stay on one side of the split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fair_trl.data._release import ImageIndex, decodable, locate_file, read_csv, require_dir
from fair_trl.data.schema import BuildSummary, schema_age, schema_sex
from fair_trl.labels import DATASET_LABELS

NAME = "pad_ufes20"
METADATA = "metadata.csv"
REQUIRED_COLUMNS = ("patient_id", "img_id", "diagnostic", "age", "gender")

DIAGNOSTIC_TO_LABEL = {"ACK": "AKIEC", "BCC": "BCC", "MEL": "MEL", "NEV": "NV", "SEK": "OTHER"}
SCC_CODES = ("SCC", "BOD")


def read(
    data_dir: Path | None,
    summary: BuildSummary,
    *,
    seed: int = 0,
    progress: bool = False,
    scc_label: str = "AKIEC",
) -> list[dict[str, Any]]:
    """Schema rows (one per image) of the PAD-UFES-20 release under `data_dir`.

    `scc_label` is the class squamous cell carcinoma (SCC, incl. Bowen's disease) is mapped to.
    """
    if scc_label not in DATASET_LABELS[NAME]:
        raise ValueError(f"{NAME}: scc_label must be one of {list(DATASET_LABELS[NAME])}, got {scc_label!r}")
    mapping = {**DIAGNOSTIC_TO_LABEL, **dict.fromkeys(SCC_CODES, scc_label)}
    root = require_dir(data_dir, NAME)
    metadata = locate_file(root, METADATA, dataset=NAME)
    records = read_csv(metadata, REQUIRED_COLUMNS)
    images = ImageIndex(metadata.parent, (".png", ".jpg", ".jpeg"))
    rows = []
    for record in tqdm(records, desc=NAME, disable=not progress):
        label = mapping.get(record["diagnostic"].upper())
        if label is None:
            summary.skipped["unknown_label"] += 1
            continue
        image = images.get(record["img_id"])
        if image is None:
            summary.skipped["missing_image"] += 1
            continue
        if not decodable([image], summary):
            continue
        rows.append(
            {
                "image": str(image.absolute()),
                "solution": label,
                "dataset": NAME,
                "patient_id": record["patient_id"] or record["img_id"],
                "age": schema_age(record["age"], summary, column="age"),
                "sex": schema_sex(record["gender"], summary, column="gender"),
            }
        )
    return rows
