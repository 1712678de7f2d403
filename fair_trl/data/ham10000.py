"""HAM10000 (Tschandl et al., 2018; ISIC 2018 task 3 training set) from its public release.

Layout expected under `data_dir` (the release folder, or a folder holding it as a direct subfolder)::

    HAM10000_metadata.csv            lesion_id, image_id, dx, dx_type, age, sex, localization
    HAM10000_images_part_1/<image_id>.jpg
    HAM10000_images_part_2/<image_id>.jpg

Images are found recursively anywhere under the folder that holds the metadata file, so other part
folder names (e.g. the lower-case copies some mirrors add) work too.

Labels (paper Table 1): ``dx`` mel -> MEL, nv -> NV, bcc -> BCC, akiec -> AKIEC, and bkl (benign
keratosis), df (dermatofibroma), vasc (vascular lesion) -> OTHER. Any other ``dx`` value is skipped and
counted as ``skipped["unknown_label"]``.

Choices:

* Patient id: the release has no patient identifier, so ``lesion_id`` stands in for it. A lesion is
  photographed several times, and all its images stay on one side of the train/test split; two lesions of
  the same (unknown) patient may still be split apart.
* Demographics: ``age`` is blank for some rows and 0 for a few; both mean missing. ``sex`` is
  male/female/unknown ("unknown" is missing).
* A row with a blank ``lesion_id`` uses its ``image_id`` as patient id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fair_trl.data._release import ImageIndex, decodable, locate_file, read_csv, require_dir
from fair_trl.data.schema import BuildSummary, schema_age, schema_sex

NAME = "ham10000"
METADATA = "HAM10000_metadata.csv"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx", "age", "sex")

DX_TO_LABEL = {
    "mel": "MEL",
    "nv": "NV",
    "bcc": "BCC",
    "akiec": "AKIEC",
    "bkl": "OTHER",
    "df": "OTHER",
    "vasc": "OTHER",
}


def read(
    data_dir: Path | None, summary: BuildSummary, *, seed: int = 0, progress: bool = False
) -> list[dict[str, Any]]:
    """Schema rows (one per image) of the HAM10000 release under `data_dir`."""
    root = require_dir(data_dir, NAME)
    metadata = locate_file(root, METADATA, dataset=NAME)
    records = read_csv(metadata, REQUIRED_COLUMNS)
    images = ImageIndex(metadata.parent, (".jpg", ".jpeg", ".png"))
    rows = []
    for record in tqdm(records, desc=NAME, disable=not progress):
        label = DX_TO_LABEL.get(record["dx"].lower())
        if label is None:
            summary.skipped["unknown_label"] += 1
            continue
        image = images.find(record["image_id"])
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
                "patient_id": record["lesion_id"] or record["image_id"],
                "age": schema_age(record["age"], summary, column="age"),
                "sex": schema_sex(record["sex"], summary, column="sex"),
            }
        )
    return rows
