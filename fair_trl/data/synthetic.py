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
      (row-major; see `label_cells`). A label that is *shown* lights the inner square of its cell
      (one ``cell // 8`` pixel margin, at least 1) by ``contrast`` in every channel.
    * Background: the domain's tint colour (`DOMAIN_TINT`), so domains also differ visually.
    * Demographic cue (``demographic_cue=True``): like anatomy betrays age and sex, the image shows the
      patient's true demographics, in one of two styles (``cue``):
      - ``"pattern"``: a faint texture per demographic value over the whole image, ``cue_strength`` in
        every channel: age a1 horizontal stripes (period 2 px), a2 vertical stripes (2 px), a3 a
        checkerboard, a4 horizontal stripes (4 px), female vertical stripes (4 px), male none. The
        textures are orthogonal to each other, to the tint and to a lit cell's square (each sums to zero
        over a cell and over its inner square), so every 8 x 8 patch tells the group exactly;
      - ``"ramp"``: a vertical brightness ramp whose slope grows with age (``0.12 * (age - 50) / 50``
        from top to bottom) and, for female patients, +0.06 in the green channel. Age bins that meet
        (75 and 76) look alike, so the group is only roughly visible.
    * Gaussian pixel noise with standard deviation ``noise_std``; values are clipped to [0, 1].

Planted disparities (ground truth: `planted_ground_truth`)
    A row is *disadvantaged* when its patient's true demographics match one of ``disadvantaged``, a tuple
    of group specs ``"[domain:]attr=value[|attr=value]"`` with attr ``age`` (a1 <= 25, a2 26-50, a3 51-75,
    a4 > 75) or ``sex`` (F/M); without a domain prefix a spec applies to every domain. The defaults are
    age a1 and a4 everywhere and sex F in HAM10000, ISIC-2020 and Hemorrhage (not CheXpert, so
    that most rows of the largest domain follow the usual mapping). The disparity follows the true
    demographics, also for rows whose demographics are then hidden. What a disadvantaged row gets
    depends on the ``profile``:

    ``"reducible"`` (the default)
        Every disadvantaged group has its own fixed image-to-label rule: label ``k`` is shown in the
        cell of label ``(k + shift) % n`` of the domain's ``n`` labels. The groups that apply to a domain
        are numbered in ``disadvantaged`` order, ``j = 0, 1, ...``, and group ``j`` shifts by
        ``1 + j % (n - 1)`` (a two-label domain has one rule to give: the swap). A row matching several
        groups follows the first. The rule applies with probability ``shift_prob`` (1.0: always) and the
        noise stays ``noise_std``. With the pattern cue a reader that looks at the cue can be exactly as
        accurate on every group: the gap comes only from the groups being rare and their rules
        conflicting with the majority's, so a training method can close it.
    ``"noisy_shift"`` (the benchmark's first planting, kept so earlier reports reproduce exactly)
        With probability ``shift_prob`` (0.35) every lit cell moves to the cell of the *next* label
        (shift 1 for every group), the pixel noise is ``minority_noise_std`` (0.25) instead of
        ``noise_std``, and the cue is the ramp. Even a perfect reader that knows the group cannot tell
        a shifted image from an unshifted one, so those groups are capped near ``1 - shift_prob``:
        irreducible label noise.

    `planted_ground_truth` gives each group's best achievable accuracy (exact-match, for a reader that
    sees the lit cells and the patient's group; pixel noise at these settings flips no cell).

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
import itertools
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
    "PROFILES",
    "best_accuracy",
    "is_disadvantaged",
    "label_cells",
    "planted_shift",
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


# Values a profile gives the fields left at None; every other field has one default for all profiles.
PROFILES: dict[str, dict[str, Any]] = {
    "reducible": {"shift_prob": 1.0, "minority_noise_std": 0.06, "cue": "pattern"},
    "noisy_shift": {"shift_prob": 0.35, "minority_noise_std": 0.25, "cue": "ramp"},
}
CUES = ("pattern", "ramp")


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the synthetic benchmark. Defaults are fixed; override them by keyword."""

    num_rows: int = 2000
    """Total rows over all domains (train + test)."""
    profile: str = "reducible"
    """How disadvantaged rows differ (see the module docstring): "reducible" or "noisy_shift"."""
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
    minority_noise_std: float | None = None
    """Pixel noise of disadvantaged rows (None: the profile's, reducible 0.06, noisy_shift 0.25)."""
    shift_prob: float | None = None
    """Probability that a disadvantaged row is drawn by its group's rule (None: the profile's, 1.0 / 0.35)."""
    disadvantaged: tuple[str, ...] = ("age=a1", "age=a4", "ham10000:sex=F", "isic2020:sex=F", "hemorrhage:sex=F")
    """Group specs "[domain:]attr=value[|attr=value]" whose rows get the planted rule."""
    demographic_cue: bool = True
    """Show the patient's demographics in the image, so groups are visible."""
    cue: str | None = None
    """Style of the demographic cue: "pattern" or "ramp" (None: the profile's, pattern / ramp)."""
    cue_strength: float = 0.08
    """Amplitude of the pattern cue's textures."""
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

        if self.profile not in PROFILES:
            raise bad("profile", self.profile, f"one of {list(PROFILES)}")
        for name, value in PROFILES[self.profile].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.cue not in CUES:
            raise bad("cue", self.cue, f"one of {list(CUES)}")
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
        number("cue_strength", 0.0, 0.5)
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


@functools.lru_cache(maxsize=256)
def _domain_rules(domain: str, config: SyntheticConfig) -> tuple[tuple[str, tuple[tuple[str, str], ...], int], ...]:
    """(group key, conditions, shift) of every disadvantaged group that can occur in `domain`, in spec order."""
    n_labels = len(DATASET_LABELS[domain])
    sexes = set(_sex_probs(domain))
    rules: list[tuple[str, tuple[tuple[str, str], ...], int]] = []
    for spec_domain, conditions in _parsed_specs(config.disadvantaged):
        if spec_domain not in (None, domain):
            continue
        if any(attr == "sex" and value not in sexes for attr, value in conditions):
            continue  # e.g. sex in COVID-BLUES (no sex column) or men in VinDr-Mammo: never matches
        # Key order matches GroupKeyer's default columns ("sex", "age").
        ordered = tuple(sorted(conditions, key=lambda c: ("sex", "age").index(c[0])))
        key = "|".join(f"{attr}={value}" for attr, value in ordered)
        if any(key == known for known, _, _ in rules):
            continue
        # Every registry domain has at least two labels, so a shift of 1 .. n - 1 always exists.
        shift = 1 if config.profile == "noisy_shift" else 1 + len(rules) % (n_labels - 1)
        rules.append((key, ordered, shift))
    return tuple(rules)


def _sex_probs(domain: str) -> dict[str | None, float]:
    female = FEMALE_FRACTION[domain]
    if female is None:
        return {None: 1.0}
    return {sex: p for sex, p in (("F", female), ("M", 1.0 - female)) if p > 0}


def _cell_shift(domain: str, values: dict[str, str | None], config: SyntheticConfig) -> int:
    for _, conditions, shift in _domain_rules(domain, config):
        if all(values[attr] == value for attr, value in conditions):
            return shift
    return 0


def planted_shift(domain: str, age: int | None, sex: str | None, config: SyntheticConfig | None = None) -> int:
    """The label shift of the rule a patient's rows follow when planted: 0 outside the disadvantaged groups."""
    config = config or SyntheticConfig()
    values = {"age": age_bin(age, DEFAULT_AGE_BINS) if age is not None else None, "sex": sex}
    return _cell_shift(domain, values, config)


def is_disadvantaged(domain: str, age: int | None, sex: str | None, config: SyntheticConfig | None = None) -> bool:
    """Whether a patient of `domain` with these *true* demographics is in a planted disadvantaged group."""
    return planted_shift(domain, age, sex, config) > 0


def _label_set_probs(domain: str, config: SyntheticConfig) -> dict[tuple[int, ...], float]:
    """Exact probability of every label set `_draw_labels` can give (sorted label indices)."""
    if domain not in MULTI_LABEL_DATASETS:
        return {(k,): float(p) for k, p in enumerate(_label_prior(domain, config.label_floor))}
    labels = DATASET_LABELS[domain]
    findings = [labels.index(name) for name in _CHEXPERT_PREVALENCE]
    weights = np.array(list(_CHEXPERT_PREVALENCE.values()))
    weights = weights / weights.sum()
    probs = {(labels.index("No Finding"),): _NO_FINDING_PROB}
    # numpy's weighted choice without replacement keeps the first appearances of i.i.d. draws, which is
    # successive sampling: each next finding is drawn from the remaining weights.
    for size, p_size in enumerate(_FINDINGS_PER_IMAGE, start=1):
        for combo in itertools.combinations(range(len(findings)), size):
            p_set = 0.0
            for order in itertools.permutations(combo):
                p, left = 1.0, 1.0
                for i in order:
                    p *= weights[i] / left
                    left -= weights[i]
                p_set += p
            key = tuple(sorted(findings[i] for i in combo))
            probs[key] = probs.get(key, 0.0) + (1 - _NO_FINDING_PROB) * p_size * p_set
    return probs


def best_accuracy(domain: str, shift: int, config: SyntheticConfig | None = None) -> float:
    """Best exact-match accuracy on rows of `domain` that follow the rule `shift` (0: the usual mapping).

    The reader sees which cells are lit and knows the row's group and rule; what it cannot know is
    whether this row was drawn by the rule (probability ``shift_prob``) or by the usual mapping. So for
    a shown label set T it answers the likelier of T and T shifted back, and the accuracy is
    sum over T of max(P(T) (1 - shift_prob), P(T shifted back) shift_prob).
    """
    config = config or SyntheticConfig()
    if shift == 0:
        return 1.0
    n = len(DATASET_LABELS[domain])
    probs = _label_set_probs(domain, config)
    p = config.shift_prob
    shown = set(probs) | {tuple(sorted((k + shift) % n for k in labels)) for labels in probs}
    total = 0.0
    for labels in shown:
        back = tuple(sorted((k - shift) % n for k in labels))
        total += max(probs.get(labels, 0.0) * (1 - p), probs.get(back, 0.0) * p)
    return float(total)


def planted_ground_truth(config: SyntheticConfig | None = None, **options: Any) -> dict[str, Any]:
    """What the benchmark plants, for reports: per domain, the disadvantaged groups, their rules and ceilings.

    Group names use the trainer's key format ("age=a4", "sex=F", "sex=F|age=a4"). A row is
    disadvantaged when its group key contains every part of one of its domain's groups. Per domain:

    * ``disadvantaged``: the groups, in the order that decides a row matching several;
    * ``rules``: per group, its label shift and ``permutation`` (label -> the label whose cell shows it);
    * ``best_accuracy``: per demographic group of the suite (age=a1..a4, sex=F/M), the best achievable
      exact-match accuracy over its rows (`best_accuracy`, mixed over the other attribute's groups by
      their expected shares).

    ``best_accuracy`` at the top level is each group's mean over the domains where it occurs, the way
    the suite averages a group's values. A gap between groups there is irreducible; the rest a method
    can close.
    """
    if config is not None and options:
        raise TypeError("planted_ground_truth: pass either a config or keyword options, not both")
    config = config or SyntheticConfig.from_options(**options)
    bins = [f"a{i + 1}" for i in range(len(_AGE_RANGES))]
    domains: dict[str, Any] = {}
    per_group: dict[str, list[float]] = {}
    for domain in config.domains:
        labels = DATASET_LABELS[domain]
        rules = _domain_rules(domain, config)
        sexes = _sex_probs(domain)
        cells = {
            (age, sex): p_age * p_sex
            for age, p_age in zip(bins, config.age_bin_probs, strict=True)
            for sex, p_sex in sexes.items()
        }
        accuracy = {
            (age, sex): best_accuracy(domain, _cell_shift(domain, {"age": age, "sex": sex}, config), config)
            for age, sex in cells
        }
        best: dict[str, float] = {}
        for attr, index, values in (("age", 0, bins), ("sex", 1, [s for s in sexes if s is not None])):
            for value in values:
                members = {cell: p for cell, p in cells.items() if cell[index] == value}
                weight = sum(members.values())
                if weight > 0:
                    key = f"{attr}={value}"
                    best[key] = round(sum(p * accuracy[cell] for cell, p in members.items()) / weight, 4)
                    per_group.setdefault(key, []).append(best[key])
        domains[domain] = {
            "disadvantaged": [key for key, _, _ in rules],
            "rules": {
                key: {"shift": shift, "permutation": {label: labels[(k + shift) % len(labels)]
                                                      for k, label in enumerate(labels)}}
                for key, _, shift in rules
            },
            "best_accuracy": best,
        }  # fmt: skip
    return {
        "profile": config.profile,
        "domains": domains,
        "best_accuracy": {key: round(float(np.mean(values)), 4) for key, values in sorted(per_group.items())},
        "shift_prob": config.shift_prob,
        "noise_std": config.noise_std,
        "minority_noise_std": config.minority_noise_std,
        "cue": config.cue if config.demographic_cue else None,
        "description": _description(config),
    }


def _description(config: SyntheticConfig) -> str:
    when = "always" if config.shift_prob == 1.0 else f"with probability {config.shift_prob}"
    noise = (
        f", and pixel noise {config.minority_noise_std} instead of {config.noise_std}"
        if config.minority_noise_std != config.noise_std
        else ""
    )
    if config.profile == "noisy_shift":
        rule = f"{when} have their lit cells moved to the next label's cells{noise}"
    else:
        rule = f"show their labels by their own group's fixed label permutation, {when}{noise}"
    cue = (
        f"The image shows each patient's true demographics ({config.cue} cue)."
        if config.demographic_cue
        else "The image does not show the demographics."
    )
    return (
        f"Profile {config.profile!r}: rows of the disadvantaged groups {rule}. {cue} Disparities follow true "
        "demographics, also where they are hidden."
    )


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
                "shift": (shift := planted_shift(domain, age, sex, config)),
                "disadvantaged": shift > 0,
            }
        )
    return patients


def _cue_patterns(size: int) -> dict[str, np.ndarray]:
    """The pattern cue's +-1 textures (size x size), one per demographic value; male has none."""
    y, x = np.mgrid[0:size, 0:size]

    def sign(bits: np.ndarray) -> np.ndarray:
        return np.where(bits % 2 == 0, 1.0, -1.0).astype(np.float32)

    # Walsh functions of the pixel coordinates' two lowest bits: mutually orthogonal, and each sums to
    # zero over any aligned 4 x 4 block, hence over a cell and over a lit cell's inner square.
    return {
        "a1": sign(y),
        "a2": sign(x),
        "a3": sign(x + y),
        "a4": sign(y // 2),
        "F": sign(x // 2),
    }


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
    texture = np.zeros((n, size, size), dtype=np.float32)
    patterns = _cue_patterns(size) if config.cue == "pattern" else {}
    for i, row in enumerate(rows):
        lit[i, row["cells"]] = 1.0
        tint[i] = DOMAIN_TINT[row["domain"]]
        if config.demographic_cue and config.cue == "ramp":
            slope[i] = 0.12 * (row["age"] - 50) / 50
            green[i] = 0.06 if row["sex"] == "F" else 0.0
        elif config.demographic_cue:
            texture[i] = patterns[age_bin(row["age"], DEFAULT_AGE_BINS)]
            if row["sex"] == "F":
                texture[i] += patterns["F"]
        noise[i] = config.minority_noise_std if row["disadvantaged"] else config.noise_std
    # Lit cells: (n, 4, 4) -> (n, S, S) with the inner-square mask inside every cell.
    cells = np.kron(lit.reshape(n, GRID, GRID), inner[None]) * config.contrast
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    image = tint[:, None, None, :] + (cells + slope[:, None, None] * ramp[None, :, None])[..., None]
    image[..., 1] += green[:, None, None]
    if patterns:
        image += (texture * config.cue_strength)[..., None]
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
                    shown = [(k + patient["shift"]) % n_labels for k in shown]
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
