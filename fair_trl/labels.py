"""The label sets of the paper's seven datasets (Table 1) and the synonyms answers use for them.

One place for the canonical label strings: the data builders write them into the `solution` column,
prompts list them as candidates, and answer extraction maps free text back onto them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DATASET_LABELS",
    "MULTI_LABEL_DATASETS",
    "SYNONYMS",
    "Labels",
    "canonical_dataset",
    "canonical_labels",
    "dataset_classes",
    "label_classes",
    "label_key",
    "read_label_sets",
    "to_label_set",
]

CHEXPERT_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
SKIN_LESION_LABELS = ("MEL", "NV", "BCC", "AKIEC", "OTHER")

DATASET_LABELS: dict[str, tuple[str, ...]] = {
    "chexpert": CHEXPERT_LABELS,
    "ham10000": SKIN_LESION_LABELS,
    "isic2020": ("Malignant", "Benign"),
    "pad_ufes20": SKIN_LESION_LABELS,
    "vindr_mammo": ("BI-RADS 1", "BI-RADS 2", "BI-RADS 3", "BI-RADS 4", "BI-RADS 5"),
    "hemorrhage": ("No Hemorrhage", "Has Hemorrhage"),
    "covid_blues": ("Has COVID", "No COVID"),
}

# CheXpert reports several observations per image; every other dataset has exactly one label per image.
MULTI_LABEL_DATASETS = frozenset({"chexpert"})

# Other ways answers name a canonical label (matched after `label_key` normalisation).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "MEL": ("melanoma", "malignant melanoma"),
    "NV": ("nevus", "nevi", "naevus", "melanocytic nevus", "melanocytic nevi", "nev", "mole"),
    "BCC": ("basal cell carcinoma",),
    "AKIEC": (
        "actinic keratosis",
        "actinic keratoses",
        "ack",
        "intraepithelial carcinoma",
        "bowen's disease",
        "bowen disease",
    ),
    "OTHER": ("other", "others", "bkl", "df", "vasc", "seborrheic keratosis", "dermatofibroma", "vascular lesion"),
    "Malignant": ("malignancy", "malignant lesion", "cancer", "cancerous"),
    "Benign": ("benign lesion", "not malignant", "non-malignant"),
    "No Hemorrhage": ("no haemorrhage", "without hemorrhage", "no bleed", "no bleeding", "no intracranial hemorrhage"),
    "Has Hemorrhage": (
        "hemorrhage",
        "haemorrhage",
        "has haemorrhage",
        "intracranial hemorrhage",
        "hemorrhage present",
        "bleed",
        "bleeding",
    ),
    "Has COVID": ("covid", "covid-19", "covid positive", "positive for covid", "has covid-19", "sars-cov-2"),
    "No COVID": ("no covid-19", "covid negative", "negative for covid", "non-covid", "not covid"),
    "No Finding": ("no findings", "normal", "no abnormality", "no abnormalities"),
    "Pleural Effusion": ("effusion",),
    "Support Devices": ("support device", "device", "devices"),
    "Lung Opacity": ("opacity", "airspace opacity"),
    "Lung Lesion": ("lesion", "nodule", "mass"),
    "Enlarged Cardiomediastinum": ("enlarged cardiac silhouette", "widened mediastinum"),
    **{
        f"BI-RADS {n}": (str(n), f"birads {n}", f"bi rads {n}", f"bi-rads category {n}", f"category {n}")
        for n in range(1, 6)
    },
}

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def label_key(text: str) -> str:
    """Lower-case alphanumerics only, so "BI-RADS 2", "birads 2" and "Bi Rads 2" all compare equal."""
    return _NON_ALNUM.sub("", text.lower())


def canonical_dataset(name: str) -> str | None:
    """The registry name of a known dataset, also from the paper's spellings ("PAD-UFES", "VinDr")."""
    wanted = label_key(name)
    for known in DATASET_LABELS:
        if label_key(known) == wanted:
            return known
    return _DATASET_ALIASES.get(wanted)


def canonical_labels(dataset: str) -> tuple[str, ...] | None:
    """The label set of a known dataset, None for a dataset this module does not know."""
    name = canonical_dataset(dataset)
    return DATASET_LABELS[name] if name else None


Labels = str | Iterable[str] | None


def to_label_set(value: Labels) -> frozenset[str]:
    """A label string ("Edema, Pneumonia" is two labels), a set/list of labels, or None (no label)."""
    if value is None:
        return frozenset()
    parts = value.split(",") if isinstance(value, str) else value
    return frozenset(p.strip() for p in parts if p is not None and p.strip())


def label_classes(dataset: str | None, references: Iterable[Labels] = (), use_known: bool = True) -> tuple[str, ...]:
    """The class list of one dataset, the one rule every scorer uses.

    A known dataset's label set (`DATASET_LABELS`), unless ``use_known=False``; otherwise every label
    its references use, sorted.
    """
    known = canonical_labels(dataset) if use_known and dataset else None
    if known is not None:
        return known
    seen: set[str] = set()
    for reference in references:
        seen |= to_label_set(reference)
    return tuple(sorted(seen))


def dataset_classes(
    datasets: Sequence[str], references: Sequence[Labels], use_known: bool = True
) -> dict[str, tuple[str, ...]]:
    """`label_classes` of every dataset in `datasets`, from the references of its own rows."""
    by_dataset: dict[str, list[Labels]] = {}
    for dataset, reference in zip(datasets, references, strict=True):
        by_dataset.setdefault(dataset, []).append(reference)
    return {name: label_classes(name, refs, use_known) for name, refs in by_dataset.items()}


# Names the paper's tables and the authors' files use for the same datasets.
_DATASET_ALIASES = {
    "padufes": "pad_ufes20",
    "vindr": "vindr_mammo",
    "isic": "isic2020",
    "ham": "ham10000",
    "covidblues": "covid_blues",
    "ctich": "hemorrhage",
}


def read_label_sets(value: Mapping[str, Any] | str | Path | None) -> dict[str, list[str]] | None:
    """Declared label sets, {domain: [label, ...]}, from a mapping, its JSON text, or a .json/.yaml file.

    None (or an empty mapping) declares none. Each set is a non-empty list of distinct label strings.
    """
    source = "label_sets"
    if isinstance(value, Path) or (isinstance(value, str) and not value.lstrip().startswith("{")):
        path = Path(value).expanduser()
        if not str(value).strip():
            return None
        if not path.is_file():
            raise ValueError(f"label_sets {str(value)!r} is neither a JSON mapping nor a file")
        source = str(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            value = yaml.safe_load(text)
        else:
            value = _json_mapping(text, source)
    elif isinstance(value, str):
        value = _json_mapping(value, source)
    if not value:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{source}: expected a mapping {{domain: [label, ...]}}, got {type(value).__name__}")
    out: dict[str, list[str]] = {}
    for domain, labels in value.items():
        if isinstance(labels, str) or not isinstance(labels, Iterable):
            raise ValueError(f"{source}: the labels of {domain!r} must be a list of strings, got {labels!r}")
        labels = [str(label).strip() for label in labels]
        if not labels or any(not label for label in labels):
            raise ValueError(f"{source}: the labels of {domain!r} must be non-empty strings, got {labels!r}")
        keys = [label_key(label) for label in labels]
        clash = sorted({label for label, key in zip(labels, keys, strict=True) if keys.count(key) > 1})
        if clash:
            raise ValueError(f"{source}: labels of {domain!r} that compare equal: {clash}")
        out[str(domain).strip()] = labels
    return out


def _json_mapping(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: not valid JSON ({err.msg}, line {err.lineno})") from None
