"""Synthetic clinical benchmark: seven domains, tiny images, planted demographic disparities.

``build_dataset("synthetic", None, **params)`` generates it; no file is read or downloaded. It is the
embedded default of the demo and the tests, and the benchmark on which GRPO and FairGRPO are compared.
Every parameter lives in `SyntheticConfig` (defaults below, fixed before any method comparison);
keyword options of `build_dataset` override them, e.g. ``build_dataset("synthetic", None, num_rows=2000,
seed=3)``. Same parameters and seed give an identical dataset.

Domains and labels
    The seven registry domains with their `fair_trl.labels.DATASET_LABELS` label sets. Rows are spread
    over domains in proportion to the paper's Table 1 sample counts (CheXpert 212,498 ... COVID-BLUES
    362), with every domain raised to at least ``min_domain_fraction`` of the rows (and one row); counts
    are allocated exactly (largest remainder), not sampled. CheXpert is multi-label: "No Finding" alone
    (probability 0.15) or 1-3 findings (probabilities 0.5/0.3/0.2) drawn by rough CheXpert prevalence;
    every other domain has one label per row, drawn from a prior shaped like its release (e.g. HAM10000
    mostly NV, VinDr-Mammo mostly BI-RADS 1) with every label raised to at least ``label_floor`` so rare
    labels still occur.

Images (``image_size`` x ``image_size`` RGB, default 32 x 32, stored as PNG bytes)
    * A 4 x 4 grid of square cells. Label ``k`` of a domain owns cell ``(CELL_OFFSET[domain] + k) % 16``
      (row-major; see `label_cells`). A label that is present lights the inner square of its cell
      (one ``cell // 8`` pixel margin, at least 1) by ``contrast`` in every channel.
    * Background: the domain's tint colour (`DOMAIN_TINT`), so domains also differ visually.
    * Demographic cue (``demographic_cue=True``): like anatomy betrays age and sex, the image shows the
      patient's true demographics: a vertical brightness ramp whose slope grows with age
      (``0.12 * (age - 50) / 50`` from top to bottom) and, for female patients, +0.06 in the green channel.
      This makes the planted groups learnable, so a method that attends to them can close the gap.
    * Gaussian pixel noise with standard deviation ``noise_std``; values are clipped to [0, 1].

Planted disparities (ground truth: `planted_ground_truth`)
    A row is *disadvantaged* when its patient's true demographics match one of ``disadvantaged``, a tuple
    of group specs ``"[domain:]attr=value[|attr=value]"`` with attr ``age`` (a1 <= 25, a2 26-50, a3 51-75,
    a4 > 75) or ``sex`` (F/M); without a domain prefix a spec applies to every domain. The defaults are
    age a1 and a4 everywhere and sex F in HAM10000, ISIC-2020 and Hemorrhage (not CheXpert, so
    that most rows of the largest domain follow the usual mapping). For a disadvantaged row:
    * with probability ``shift_prob`` every lit cell moves to the cell of the *next* label of the domain
      (label ``k`` is drawn in the cell of label ``(k + 1) % n``): the usual image-to-label mapping is
      wrong for these rows (the label stays the true one), and
    * the pixel noise has standard deviation ``minority_noise_std`` instead of ``noise_std``.
    The disparity follows the true demographics, also for rows whose demographics are then hidden.

Demographics
    Ages: an age bin drawn with ``age_bin_probs`` (few a1 and a4), then a whole age uniform in the bin
    (a1 18-25, a2 26-50, a3 51-75, a4 76-90). Sex: female with the domain's `FEMALE_FRACTION` (VinDr-Mammo
    all female); COVID-BLUES has no sex column in its release, so its sex is always None. A fraction
    ``missing_demographics`` of *patients* (so about that fraction of rows) have age and sex removed
    (None), like real releases; the build summary counts them as missing.

Patients
    Each patient has 1-3 rows (probabilities 0.5/0.3/0.2), ids ``"<domain>-p000001"``; labels are drawn
    per row. Rows are shuffled, so any prefix of the dataset mixes domains.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fair_trl.data.schema import BuildSummary, png_bytes, schema_age, schema_sex
from fair_trl.groups import DEFAULT_AGE_BINS, age_bin
from fair_trl.labels import DATASET_LABELS, MULTI_LABEL_DATASETS

__all__ = [
    "CELL_OFFSET",
    "DOMAIN_TINT",
    "FEMALE_FRACTION",
    "GRID",
    "TABLE1_COUNTS",
    "SyntheticConfig",
    "is_disadvantaged",
    "label_cells",
    "planted_ground_truth",
    "read",
]

# The paper's Table 1 sample counts; the default domain mix is proportional to them (with a floor).
TABLE1_COUNTS: dict[str, int] = {
    "chexpert": 212_498,
    "isic2020": 33_126,
    "vindr_mammo": 20_000,
    "ham10000": 10_015,
    "hemorrhage": 2_501,
    "pad_ufes20": 2_298,
    "covid_blues": 362,
}
ALL_DOMAINS: tuple[str, ...] = tuple(DATASET_LABELS)

GRID = 4  # cells per side; 16 cells hold CheXpert's 14 labels
CELL_OFFSET: dict[str, int] = {
    "chexpert": 0,
    "ham10000": 2,
    "isic2020": 5,
    "pad_ufes20": 8,
    "vindr_mammo": 10,
    "hemorrhage": 13,
    "covid_blues": 6,
}
DOMAIN_TINT: dict[str, tuple[float, float, float]] = {
    "chexpert": (0.30, 0.30, 0.30),
    "ham10000": (0.42, 0.28, 0.22),
    "isic2020": (0.36, 0.24, 0.30),
    "pad_ufes20": (0.44, 0.34, 0.26),
    "vindr_mammo": (0.22, 0.22, 0.30),
    "hemorrhage": (0.26, 0.32, 0.26),
    "covid_blues": (0.18, 0.24, 0.34),
}
# Share of female patients per domain; None: the release has no sex column.
FEMALE_FRACTION: dict[str, float | None] = {
    "chexpert": 0.41,
    "ham10000": 0.45,
    "isic2020": 0.48,
    "pad_ufes20": 0.47,
    "vindr_mammo": 1.0,
    "hemorrhage": 0.45,
    "covid_blues": None,
}
# Rough label priors of the releases (before `label_floor`), in DATASET_LABELS order.
_LABEL_PRIOR: dict[str, tuple[float, ...]] = {
    "ham10000": (0.11, 0.67, 0.05, 0.03, 0.14),  # MEL NV BCC AKIEC OTHER
    "isic2020": (0.02, 0.98),  # Malignant Benign
    "pad_ufes20": (0.02, 0.11, 0.37, 0.40, 0.10),  # MEL NV BCC AKIEC(ACK+SCC) OTHER(SEK)
    "vindr_mammo": (0.67, 0.23, 0.05, 0.04, 0.01),
    "hemorrhage": (0.87, 0.13),  # No Hemorrhage, Has Hemorrhage
    "covid_blues": (0.52, 0.48),  # Has COVID, No COVID
}
# CheXpert findings (all labels but "No Finding"): relative prevalence in the release, roughly.
_CHEXPERT_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.15,
    "Cardiomegaly": 0.12,
    "Consolidation": 0.07,
    "Edema": 0.24,
    "Enlarged Cardiomediastinum": 0.05,
    "Fracture": 0.04,
    "Lung Lesion": 0.04,
    "Lung Opacity": 0.47,
    "Pleural Effusion": 0.39,
    "Pleural Other": 0.02,
    "Pneumonia": 0.03,
    "Pneumothorax": 0.09,
    "Support Devices": 0.52,
}
_NO_FINDING_PROB = 0.15
_FINDINGS_PER_IMAGE = (0.5, 0.3, 0.2)  # P(1), P(2), P(3) findings
_ROWS_PER_PATIENT = (0.5, 0.3, 0.2)  # P(1), P(2), P(3) rows
_AGE_RANGES = ((18, 25), (26, 50), (51, 75), (76, 90))  # inclusive, per bin a1..a4
_CHUNK = 1024  # images generated per vectorised chunk


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the synthetic benchmark. Defaults are fixed; override them by keyword."""

    num_rows: int = 2000
    """Total rows over all domains (train + test)."""
    domains: tuple[str, ...] = ALL_DOMAINS
    """Which registry domains to generate (a subset keeps the Table 1 proportions among them)."""
    min_domain_fraction: float = 0.02
    """Every domain gets at least this share of the rows (and at least one row)."""
    image_size: int = 32
    """Side of the square RGB images in pixels; a multiple of 4, at least 8."""
    contrast: float = 0.45
    """Brightness added to a lit cell."""
    noise_std: float = 0.06
    """Pixel noise of rows outside the disadvantaged groups."""
    minority_noise_std: float = 0.25
    """Pixel noise of disadvantaged rows."""
    shift_prob: float = 0.35
    """Probability that a disadvantaged row's lit cells sit in the next label's cells."""
    disadvantaged: tuple[str, ...] = ("age=a1", "age=a4", "ham10000:sex=F", "isic2020:sex=F", "hemorrhage:sex=F")
    """Group specs "[domain:]attr=value[|attr=value]" whose rows get the shift and the extra noise."""
    demographic_cue: bool = True
    """Draw the age ramp and the female tint, so groups are visible in the image."""
    missing_demographics: float = 0.10
    """Share of patients whose age and sex are removed (None)."""
    age_bin_probs: tuple[float, float, float, float] = (0.06, 0.32, 0.48, 0.14)
    """Probabilities of the age bins a1 (<= 25), a2 (26-50), a3 (51-75), a4 (> 75)."""
    label_floor: float = 0.05
    """Minimum prior of each label of a single-label domain (then renormalised)."""

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, expected: str) -> ValueError:
            return ValueError(f"synthetic: invalid {name}={value!r}; expected {expected}")

        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise bad(name, value, f"an integer >= {low}")

        def number(name: str, low: float, high: float, *, open_high: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and low <= value and (value < high if open_high else value <= high)
            if not ok:
                raise bad(name, value, f"a number in [{low}, {high}{')' if open_high else ']'}")

        if isinstance(self.domains, str):
            object.__setattr__(self, "domains", (self.domains,))
        object.__setattr__(self, "domains", tuple(self.domains))
        if not self.domains:
            raise bad("domains", self.domains, f"a non-empty subset of {list(ALL_DOMAINS)}")
        for domain in self.domains:
            if domain not in ALL_DOMAINS:
                raise bad("domains", self.domains, f"names from {list(ALL_DOMAINS)}")
        if len(set(self.domains)) != len(self.domains):
            raise bad("domains", self.domains, "no duplicates")
        integer("num_rows", len(self.domains))
        integer("image_size", 8)
        if self.image_size % GRID:
            raise bad("image_size", self.image_size, f"a multiple of {GRID}")
        number("min_domain_fraction", 0.0, 1.0 / len(self.domains))
        number("contrast", 0.0, 1.0)
        number("noise_std", 0.0, 1.0)
        number("minority_noise_std", 0.0, 1.0)
        number("shift_prob", 0.0, 1.0)
        number("missing_demographics", 0.0, 1.0)
        number("label_floor", 0.0, 0.2)
        if not isinstance(self.demographic_cue, bool):
            raise bad("demographic_cue", self.demographic_cue, "True or False")
        probs = tuple(self.age_bin_probs)
        if (
            len(probs) != len(_AGE_RANGES)
            or any(isinstance(p, bool) or not isinstance(p, numbers.Real) or not p >= 0 for p in probs)
            or not math.isclose(sum(probs), 1.0, abs_tol=1e-6)
        ):
            raise bad("age_bin_probs", self.age_bin_probs, "four non-negative probabilities summing to 1")
        object.__setattr__(self, "age_bin_probs", probs)
        if isinstance(self.disadvantaged, str):
            object.__setattr__(self, "disadvantaged", (self.disadvantaged,))
        object.__setattr__(self, "disadvantaged", tuple(self.disadvantaged))
        _parsed_specs(self.disadvantaged)  # raises on a malformed spec

    @classmethod
    def from_options(cls, **options: Any) -> SyntheticConfig:
        """A config from keyword options; an unknown name raises TypeError listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(f"synthetic: unknown parameter(s) {unknown}; valid parameters are {valid}")
        return cls(**options)


@functools.lru_cache(maxsize=32)
def _parsed_specs(specs: tuple[str, ...]) -> tuple[tuple[str | None, tuple[tuple[str, str], ...]], ...]:
    return tuple(_parse_spec(spec) for spec in specs)


def _parse_spec(spec: Any) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    expected = "'[domain:]attr=value[|attr=value]' with attr age (a1-a4) or sex (F/M), e.g. 'chexpert:sex=F'"
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"synthetic: invalid disadvantaged group {spec!r}; expected {expected}")
    domain, _, groups = spec.strip().rpartition(":")
    if domain and domain not in ALL_DOMAINS:
        raise ValueError(f"synthetic: unknown domain {domain!r} in disadvantaged group {spec!r}; expected {expected}")
    conditions = []
    for part in groups.split("|"):
        attr, sep, value = (s.strip() for s in part.partition("="))
        allowed = {"age": ("a1", "a2", "a3", "a4"), "sex": ("F", "M")}.get(attr, ())
        if not sep or value not in allowed:
            raise ValueError(f"synthetic: invalid disadvantaged group {spec!r}; expected {expected}")
        conditions.append((attr, value))
    if len({attr for attr, _ in conditions}) != len(conditions):
        raise ValueError(f"synthetic: disadvantaged group {spec!r} repeats an attribute")
    return (domain or None, tuple(conditions))


def label_cells(domain: str) -> dict[str, int]:
    """Cell index (row-major in the 4 x 4 grid) that each label of `domain` lights."""
    labels = DATASET_LABELS[domain]
    return {label: (CELL_OFFSET[domain] + k) % (GRID * GRID) for k, label in enumerate(labels)}


def is_disadvantaged(domain: str, age: int | None, sex: str | None, config: SyntheticConfig | None = None) -> bool:
    """Whether a patient of `domain` with these *true* demographics is in a planted disadvantaged group."""
    config = config or SyntheticConfig()
    values = {"age": age_bin(age, DEFAULT_AGE_BINS) if age is not None else None, "sex": sex}
    for spec_domain, conditions in _parsed_specs(config.disadvantaged):
        if spec_domain not in (None, domain):
            continue
        if all(values[attr] == value for attr, value in conditions):
            return True
    return False


def planted_ground_truth(config: SyntheticConfig | None = None, **options: Any) -> dict[str, Any]:
    """What the benchmark plants, for reports: per domain, the disadvantaged groups and their effects.

    Group names use the trainer's key format ("age=a4", "sex=F", "sex=F|age=a4"). A row is
    disadvantaged when its group key contains every part of one of its domain's groups.
    """
    if config is not None and options:
        raise TypeError("planted_ground_truth: pass either a config or keyword options, not both")
    config = config or SyntheticConfig.from_options(**options)
    domains: dict[str, Any] = {}
    for domain in config.domains:
        groups = []
        for spec_domain, conditions in _parsed_specs(config.disadvantaged):
            if spec_domain in (None, domain):
                # Key order matches GroupKeyer's default columns ("sex", "age").
                ordered = sorted(conditions, key=lambda c: ("sex", "age").index(c[0]))
                key = "|".join(f"{attr}={value}" for attr, value in ordered)
                if key not in groups:
                    groups.append(key)
        if FEMALE_FRACTION[domain] is None:
            groups = [g for g in groups if "sex=" not in g]  # no sex in this release: never matches
        if FEMALE_FRACTION[domain] == 1.0:
            groups = [g for g in groups if "sex=M" not in g]
        domains[domain] = {"disadvantaged": groups}
    return {
        "domains": domains,
        "shift_prob": config.shift_prob,
        "noise_std": config.noise_std,
        "minority_noise_std": config.minority_noise_std,
        "description": (
            f"Rows of the disadvantaged groups have, with probability {config.shift_prob}, their lit cells "
            f"moved to the next label's cells, and pixel noise {config.minority_noise_std} instead of "
            f"{config.noise_std}. Disparities follow true demographics, also where they are hidden."
        ),
    }


def _domain_counts(config: SyntheticConfig) -> dict[str, int]:
    """Rows per domain: Table 1 proportions, floored, allocated exactly by largest remainder."""
    weights = np.array([TABLE1_COUNTS[d] for d in config.domains], dtype=float)
    share = weights / weights.sum()
    floor = config.min_domain_fraction
    fixed = np.zeros(len(share), dtype=bool)
    # Raise small domains to the floor and rescale the others until no rescaled share drops below it.
    while True:
        free = ~fixed
        scaled = np.where(fixed, floor, share * (1 - floor * fixed.sum()) / share[free].sum())
        newly = free & (scaled < floor)
        if not newly.any():
            break
        fixed |= newly
    exact = scaled * config.num_rows
    counts = np.maximum(np.floor(exact).astype(int), 1)
    remainder = config.num_rows - counts.sum()
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    step = 1 if remainder > 0 else -1
    i = 0
    while remainder != 0:
        j = order[i % len(order)] if step > 0 else int(np.argmax(counts))
        if step > 0 or counts[j] > 1:
            counts[j] += step
            remainder -= step
        i += 1
    return dict(zip(config.domains, counts.tolist(), strict=True))


def _label_prior(domain: str, floor: float) -> np.ndarray:
    prior = np.maximum(np.array(_LABEL_PRIOR[domain]), floor)
    return prior / prior.sum()


def _draw_labels(domain: str, n: int, rng: np.random.Generator, config: SyntheticConfig) -> list[list[int]]:
    """Label indices (into DATASET_LABELS[domain]) of `n` rows."""
    labels = DATASET_LABELS[domain]
    if domain not in MULTI_LABEL_DATASETS:
        return [[int(k)] for k in rng.choice(len(labels), size=n, p=_label_prior(domain, config.label_floor))]
    findings = [labels.index(name) for name in _CHEXPERT_PREVALENCE]
    weights = np.array(list(_CHEXPERT_PREVALENCE.values()))
    weights = weights / weights.sum()
    no_finding = labels.index("No Finding")
    out = []
    for _ in range(n):
        if rng.random() < _NO_FINDING_PROB:
            out.append([no_finding])
        else:
            k = int(rng.choice(3, p=_FINDINGS_PER_IMAGE)) + 1
            out.append(sorted(int(findings[i]) for i in rng.choice(len(findings), size=k, replace=False, p=weights)))
    return out


def _patients(domain: str, n_rows: int, rng: np.random.Generator, config: SyntheticConfig) -> list[dict[str, Any]]:
    """Patients of `domain` covering exactly `n_rows` rows, with true and released demographics."""
    female = FEMALE_FRACTION[domain]
    patients = []
    left = n_rows
    while left > 0:
        rows = min(int(rng.choice(3, p=_ROWS_PER_PATIENT)) + 1, left)
        left -= rows
        low, high = _AGE_RANGES[int(rng.choice(4, p=config.age_bin_probs))]
        age = int(rng.integers(low, high + 1))
        sex = None if female is None else ("F" if rng.random() < female else "M")
        hidden = bool(rng.random() < config.missing_demographics)
        patients.append(
            {
                "id": f"{domain}-p{len(patients) + 1:06d}",
                "rows": rows,
                "age": age,
                "sex": sex,
                "hidden": hidden,
                "disadvantaged": is_disadvantaged(domain, age, sex, config),
            }
        )
    return patients


def _render(rows: list[dict[str, Any]], rng: np.random.Generator, config: SyntheticConfig) -> np.ndarray:
    """uint8 images (N x S x S x 3) for `rows` (keys: domain, cells, age, sex, disadvantaged)."""
    size = config.image_size
    cell = size // GRID
    margin = max(1, cell // 8)
    inner = np.zeros((cell, cell), dtype=np.float32)
    inner[margin : cell - margin, margin : cell - margin] = 1.0
    n = len(rows)
    lit = np.zeros((n, GRID * GRID), dtype=np.float32)
    tint = np.empty((n, 3), dtype=np.float32)
    slope = np.zeros(n, dtype=np.float32)
    green = np.zeros(n, dtype=np.float32)
    noise = np.empty(n, dtype=np.float32)
    for i, row in enumerate(rows):
        lit[i, row["cells"]] = 1.0
        tint[i] = DOMAIN_TINT[row["domain"]]
        if config.demographic_cue:
            slope[i] = 0.12 * (row["age"] - 50) / 50
            green[i] = 0.06 if row["sex"] == "F" else 0.0
        noise[i] = config.minority_noise_std if row["disadvantaged"] else config.noise_std
    # Lit cells: (n, 4, 4) -> (n, S, S) with the inner-square mask inside every cell.
    cells = np.kron(lit.reshape(n, GRID, GRID), inner[None]) * config.contrast
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    image = tint[:, None, None, :] + (cells + slope[:, None, None] * ramp[None, :, None])[..., None]
    image[..., 1] += green[:, None, None]
    image += rng.standard_normal(image.shape, dtype=np.float32) * noise[:, None, None, None]
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def read(
    data_dir: Path | None,
    summary: BuildSummary,
    *,
    seed: int = 0,
    progress: bool = False,
    config: SyntheticConfig | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Generate the synthetic rows (see the module docstring); `options` override `SyntheticConfig` fields."""
    if data_dir is not None:
        raise ValueError(f"synthetic: the benchmark is generated, not read; pass data_dir=None (got {data_dir!r})")
    if config is not None and options:
        raise TypeError("synthetic: pass either config= or keyword parameters, not both")
    config = config or SyntheticConfig.from_options(**options)
    rng = np.random.default_rng(seed)

    plan: list[dict[str, Any]] = []
    for domain, n_rows in _domain_counts(config).items():
        patients = _patients(domain, n_rows, rng, config)
        labels = _draw_labels(domain, n_rows, rng, config)
        cells_of = list(label_cells(domain).values())
        n_labels = len(cells_of)
        i = 0
        for patient in patients:
            for _ in range(patient["rows"]):
                shown = labels[i]
                if patient["disadvantaged"] and rng.random() < config.shift_prob:
                    shown = [(k + 1) % n_labels for k in shown]
                plan.append({**patient, "domain": domain, "labels": labels[i], "cells": [cells_of[k] for k in shown]})
                i += 1
    order = rng.permutation(len(plan))
    plan = [plan[i] for i in order]

    rows: list[dict[str, Any]] = []
    with tqdm(total=len(plan), desc="synthetic", disable=not progress) as bar:
        for start in range(0, len(plan), _CHUNK):
            chunk = plan[start : start + _CHUNK]
            for item, pixels in zip(chunk, _render(chunk, rng, config), strict=True):
                names = DATASET_LABELS[item["domain"]]
                age = None if item["hidden"] else item["age"]
                sex = None if item["hidden"] else item["sex"]
                rows.append(
                    {
                        "image": png_bytes(pixels),
                        "solution": ", ".join(names[k] for k in sorted(item["labels"])),
                        "dataset": item["domain"],
                        "patient_id": item["id"],
                        "age": schema_age(age, summary, column="age"),
                        "sex": schema_sex(sex, summary, column="sex"),
                    }
                )
            bar.update(len(chunk))
    return rows
