"""Demographic attributes -> group keys for fairness-aware training and metrics.

Every batch row is mapped to a group key such as ``"sex=F|age=a3"``: the intersection of the configured
attributes. Each configured column is ``"name"`` (its kind from the name: `column_kind`) or
``"name:kind"`` with kind ``age``, ``sex`` or ``category`` (``"PatientAge:age"``). The rules follow what
public clinical releases actually contain:

* Missing demographics are written as blanks, ``"unknown"``/``"n/a"``-style tokens, NaN, or an age of 0
  (a placeholder, not a newborn). Missing means "unknown", neither its own group nor an error.
* Partly missing demographics (the policy): a group key holds the attributes the row's domain records
  (known in at least one of its train rows; COVID-BLUES records no sex, so its keys are ages). A row
  with some of them unknown takes the most common complete group of its domain that agrees with what is
  known (`GroupKeyer.fit`); with none known, or none that agrees, or before `fit`, it has no key (None)
  and FairGRPO puts it in the latent groups of its domain. Keying it by its known part (``age=a2`` for a
  row lacking sex) would make a small group of its own that FairGRPO's sqrt(N) temperature boosts for
  being small, not for being disadvantaged; benchmarks/missing_demographics.py measures the weights.
  Per-attribute metrics (`GroupKeyer.attribute`) still use every known value.
* Invalid values (negative or implausibly large ages, free text, unknown sex codes) are data bugs. They
  must not crash a long training run, so they are counted, logged once per column, and then treated as
  missing.
* Ages fall into the paper's bins a1 (<= 25), a2 (26-50), a3 (51-75), a4 (> 75); the bounds are
  configurable. DICOM age strings (``"053Y"``, ``"006M"``) are accepted because image-derived metadata
  often carries them verbatim.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
import numbers
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "ALL_DOMAINS",
    "AUTO",
    "COLUMN_KINDS",
    "DEFAULT_AGE_BINS",
    "DEFAULT_DEMOGRAPHIC_COLUMNS",
    "DEFAULT_DOMAIN_COLUMN",
    "DEFAULT_MAX_AGE",
    "MISSING_TOKENS",
    "UNKNOWN",
    "GroupKeyer",
    "InvalidDemographic",
    "age_bin",
    "column_kind",
    "column_names",
    "domain_key",
    "is_auto",
    "read_demographic_columns",
    "read_domain_column",
    "normalise_attribute",
    "parse_column",
    "parse_columns",
    "parse_age",
    "parse_category",
    "parse_sex",
]

logger = logging.getLogger(__name__)

# The one spelling of "not known", for a group (a prompt without demographics, in logs and weights)
# and for a domain (a row whose domain column is blank).
UNKNOWN = "unknown"
# The single domain of every row when no domain column is configured.
ALL_DOMAINS = "all"

# The column settings left at their defaults: the default columns, each where the train dataset has it
# (`fair_trl.inspection.resolve_columns`). Until a dataset resolves them they read as the default columns,
# a row lacking one reading as unknown.
AUTO = "auto"
DEFAULT_DOMAIN_COLUMN = "dataset"
DEFAULT_DEMOGRAPHIC_COLUMNS: tuple[str, ...] = ("sex", "age")

DEFAULT_AGE_BINS: tuple[float, ...] = (25, 50, 75)
DEFAULT_MAX_AGE: float = 120

# Compared after strip() + lower(); these are the spellings used for "unknown" across clinical releases.
MISSING_TOKENS: frozenset[str] = frozenset({"", "unknown", "unk", "n/a", "na", "none", "nan"})
# A bare "U" is the DICOM PatientSex code for unknown; it only means that in a sex column.
_SEX_MISSING_TOKENS: frozenset[str] = MISSING_TOKENS | {"u"}
_SEX_FEMALE: frozenset[str] = frozenset({"f", "female", "woman", "women", "girl"})
_SEX_MALE: frozenset[str] = frozenset({"m", "male", "man", "men", "boy"})

# Plain decimal numbers only: float() would also accept "1_000", "infinity" or "nan" spelled oddly, and
# those are data bugs rather than ages.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# DICOM AS value representation is "nnnU"; exports sometimes drop the zero padding, so 1-3 digits.
_DICOM_AGE_RE = re.compile(r"(\d{1,3})([DWMY])", re.IGNORECASE)
_DAYS_PER_YEAR = 365.25
_DICOM_UNIT_TO_YEARS = {"D": 1 / _DAYS_PER_YEAR, "W": 7 / _DAYS_PER_YEAR, "M": 1 / 12, "Y": 1.0}

# Group keys are "col=value" joined by "|", so these characters must not appear inside values.
_KEY_SEPARATORS = re.compile(r"[|=]")


class InvalidDemographic(ValueError):
    """A demographic value that is present but cannot be a real value (as opposed to missing)."""


ColumnKind = Literal["age", "sex", "category"]
COLUMN_KINDS: tuple[ColumnKind, ...] = ("age", "sex", "category")


def column_kind(column: str) -> ColumnKind:
    """Which parser a column gets from its name alone (case-insensitive); ``"name:kind"`` overrides it."""
    name = column.lower()
    # Releases name it "age", "Age", "age_approx", "age_at_scan", ...
    # "age", "age_approx", "AgeAtScan", but not "agency": a lower-case letter after "age" ends the match.
    if re.match(r"(?i:age)(?![a-z])", column):
        return "age"
    if name in ("sex", "gender"):
        return "sex"
    return "category"


def parse_column(spec: str) -> tuple[str, ColumnKind]:
    """``"PatientAge:age"`` -> ("PatientAge", "age"); ``"sex"`` -> ("sex", its kind by name)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"demographic column names must be non-empty strings, got {spec!r}")
    name, sep, kind = spec.rpartition(":")
    if not sep:
        name = spec.strip()
        return name, column_kind(name)
    name, kind = name.strip(), kind.strip().lower()
    if kind not in COLUMN_KINDS:
        raise ValueError(
            f"demographic column {spec!r}: unknown kind {kind!r}; expected 'name' or 'name:kind' with kind one of "
            f"{', '.join(COLUMN_KINDS)}"
        )
    if not name:
        raise ValueError(f"demographic column {spec!r} has no column name before ':'")
    return name, kind  # type: ignore[return-value]


def parse_columns(specs: Iterable[str] | str) -> dict[str, ColumnKind]:
    """{column: kind} of a `demographic_columns` list, in order; a duplicate column is an error."""
    if isinstance(specs, str):
        specs = [specs]  # a bare string would otherwise be split into one-letter columns
    kinds: dict[str, ColumnKind] = {}
    for spec in specs:
        name, kind = parse_column(spec)
        if name in kinds:
            raise ValueError(f"duplicate demographic column {name!r}")
        kinds[name] = kind
    return kinds


def column_names(specs: Iterable[str] | str) -> tuple[str, ...]:
    """The dataset columns a `demographic_columns` list reads (its ``":kind"`` suffixes dropped)."""
    return tuple(parse_columns(specs))


def is_auto(setting: Any) -> bool:
    """Whether a `domain_column` or `demographic_columns` setting is the `AUTO` default (``"auto"`` or ``["auto"]``)."""
    if isinstance(setting, str):
        return setting == AUTO
    return isinstance(setting, list | tuple) and list(setting) == [AUTO]


def read_domain_column(setting: str | None) -> str | None:
    """The domain column a setting reads before a dataset resolves it: `AUTO` reads the default column."""
    return DEFAULT_DOMAIN_COLUMN if is_auto(setting) else setting


def read_demographic_columns(setting: Sequence[str] | str) -> Sequence[str] | str:
    """The demographic columns a setting reads before a dataset resolves it: `AUTO` reads the default columns
    (a row lacking one reads as unknown)."""
    return DEFAULT_DEMOGRAPHIC_COLUMNS if is_auto(setting) else setting


def _is_nan(value: Any) -> bool:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return math.isnan(float(value))
        except (TypeError, ValueError, OverflowError):
            return False
    return False


def _as_text(value: Any) -> str | None:
    """Text form of string-like values, None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return None


def parse_age(value: Any, max_age: float = DEFAULT_MAX_AGE) -> float | None:
    """Parse an age in years.

    Returns None for missing values (None, NaN, blank, "unknown"-style tokens, 0) and raises
    InvalidDemographic for values that are present but not a plausible age.
    """
    if value is None or _is_nan(value):
        return None
    # bool is an int subclass, but True is never a meaningful age.
    if isinstance(value, bool | np.bool_):
        raise InvalidDemographic(f"invalid age {value!r}: booleans are not ages")

    text = _as_text(value)
    if text is not None:
        stripped = text.strip()
        if stripped.lower() in MISSING_TOKENS:
            return None
        if _NUMBER_RE.fullmatch(stripped):
            age = float(stripped)
        elif match := _DICOM_AGE_RE.fullmatch(stripped):
            age = int(match.group(1)) * _DICOM_UNIT_TO_YEARS[match.group(2).upper()]
        else:
            raise InvalidDemographic(f"invalid age {value!r}: not a number or DICOM age string (e.g. '053Y')")
    else:
        try:
            age = float(value)
        except (TypeError, ValueError, OverflowError):
            raise InvalidDemographic(f"invalid age {value!r}: not a number") from None

    if math.isnan(age):
        return None
    if not math.isfinite(age):
        raise InvalidDemographic(f"invalid age {value!r}: not finite")
    # Many releases write 0 for "not recorded"; a true age-0 patient is indistinguishable and rare.
    if age == 0:
        return None
    if age < 0:
        raise InvalidDemographic(f"invalid age {value!r}: negative")
    if age > max_age:
        raise InvalidDemographic(f"invalid age {value!r}: above max_age={max_age}")
    return age


def parse_sex(value: Any) -> str | None:
    """Normalise sex/gender to "F" or "M".

    Returns None for missing values and raises InvalidDemographic for anything else unrecognised
    (e.g. "Other", "X", numeric codes whose meaning differs between releases).
    """
    if value is None or _is_nan(value):
        return None
    text = _as_text(value)
    if text is None:
        raise InvalidDemographic(f"invalid sex {value!r}: expected a string such as 'F' or 'male'")
    token = text.strip().lower()
    if token in _SEX_MISSING_TOKENS:
        return None
    if token in _SEX_FEMALE:
        return "F"
    if token in _SEX_MALE:
        return "M"
    raise InvalidDemographic(f"invalid sex {value!r}: expected F/M, female/male or an unknown marker")


def parse_category(value: Any) -> str | None:
    """Normalise a generic categorical attribute: the stripped string, or None when missing.

    The value is otherwise kept verbatim, except that "|" and "=" become "_" so group keys stay
    unambiguous. Never raises: any value has a string form.
    """
    if value is None or _is_nan(value):
        return None
    text = _as_text(value)
    stripped = (text if text is not None else str(value)).strip()
    if stripped.lower() in MISSING_TOKENS:
        return None
    return _KEY_SEPARATORS.sub("_", stripped)


@functools.lru_cache(maxsize=64)
def _checked_bins(bins: tuple[Any, ...]) -> tuple[float, ...]:
    if not bins:
        raise ValueError("age bins must be a non-empty sequence of upper bounds")
    checked: list[float] = []
    for bound in bins:
        if isinstance(bound, bool | np.bool_) or not isinstance(bound, numbers.Real):
            raise ValueError(f"age bin bound {bound!r} is not a number")
        as_float = float(bound)
        if not math.isfinite(as_float):
            raise ValueError(f"age bin bound {bound!r} is not finite")
        if checked and as_float <= checked[-1]:
            raise ValueError(f"age bin bound {bound!r} is not greater than the previous bound {checked[-1]!r}")
        checked.append(as_float)
    return tuple(checked)


def _validate_bins(bins: Sequence[float]) -> tuple[float, ...]:
    if isinstance(bins, str | bytes) or not isinstance(bins, Iterable):
        raise ValueError(f"age bins must be a sequence of upper bounds, got {bins!r}")
    return _checked_bins(tuple(bins))


def _bin_label(age: float, bins: tuple[float, ...]) -> str:
    # bisect_left gives the index of the first bound >= age, i.e. bounds are inclusive upper limits.
    return f"a{bisect.bisect_left(bins, age) + 1}"


def age_bin(age: float, bins: Sequence[float] = DEFAULT_AGE_BINS) -> str:
    """Bin label ("a1".."a{n+1}") of an already parsed age; bins are inclusive upper bounds."""
    checked = _validate_bins(bins)
    if isinstance(age, bool | np.bool_) or not isinstance(age, numbers.Real) or not math.isfinite(age):
        # NaN would silently land in the last bin; parse_age never returns it, so this is a caller bug.
        raise ValueError(f"age {age!r} must be a finite number; parse it with parse_age first")
    return _bin_label(float(age), checked)


def normalise_attribute(
    column: str,
    value: Any,
    age_bins: Sequence[float] = DEFAULT_AGE_BINS,
    max_age: float = DEFAULT_MAX_AGE,
    kind: ColumnKind | None = None,
) -> str | None:
    """One attribute's group ("F", "a3", ...) by the column's kind (`kind`, else from its name); None when missing.

    Raises InvalidDemographic for a value that is present but invalid; `GroupKeyer.attribute` counts those.
    """
    kind = kind or column_kind(column)
    if kind == "age":
        age = parse_age(value, max_age=max_age)
        return None if age is None else _bin_label(age, _validate_bins(age_bins))
    if kind == "sex":
        return parse_sex(value)
    return parse_category(value)


def domain_key(row: Mapping[str, Any], column: str | None) -> str:
    """A row's domain: its `column` value stripped, `UNKNOWN` when blank, `ALL_DOMAINS` without a column."""
    if column is None:
        return ALL_DOMAINS
    value = row.get(column)
    if value is None or _is_nan(value) or str(value).strip() == "":
        return UNKNOWN
    return str(value).strip()


class GroupKeyer:
    """Maps rows to intersectional group keys like "sex=F|age=a3", counting missing and invalid values.

    `columns`: names or ``"name:kind"`` specs (`parse_column`); `kinds` ({name: kind}) overrides kinds too.
    No columns is valid: every row is unlabeled. Invalid values never raise: a single bad row must not stop
    training. The first one per column is logged as a warning and all are counted, so summary() can report
    data quality at the end.
    """

    def __init__(
        self,
        columns: Sequence[str] = ("sex", "age"),
        age_bins: Sequence[float] = DEFAULT_AGE_BINS,
        max_age: float = DEFAULT_MAX_AGE,
        *,
        kinds: Mapping[str, str] | None = None,
        warned: set[str] | None = None,
    ) -> None:
        if not isinstance(columns, str) and any(not isinstance(c, str) or not c for c in columns):
            bad = next(c for c in columns if not isinstance(c, str) or not c)
            raise ValueError(f"column names must be non-empty strings, got {bad!r}")
        parsed = parse_columns(columns)
        for column, kind in (kinds or {}).items():
            if column not in parsed:
                raise ValueError(f"kind given for {column!r}, which is not a demographic column: {list(parsed)}")
            parsed[column] = parse_column(f"{column}:{kind}")[1]
        for column in parsed:
            if _KEY_SEPARATORS.search(column):
                raise ValueError(f"column name {column!r} contains '|' or '=', which would make keys ambiguous")
        if (
            isinstance(max_age, bool)
            or not isinstance(max_age, numbers.Real)
            or not (math.isfinite(max_age) and max_age > 0)
        ):
            raise ValueError(f"max_age must be a positive finite number, got {max_age!r}")

        self.columns: tuple[str, ...] = tuple(parsed)
        self.age_bins: tuple[float, ...] = _validate_bins(age_bins)
        self.max_age: float = float(max_age)
        self.kinds: dict[str, ColumnKind] = parsed
        self.invalid_counts: dict[str, int] = dict.fromkeys(self.columns, 0)
        self.missing_counts: dict[str, int] = dict.fromkeys(self.columns, 0)
        self.rows_seen: int = 0
        self.rows_without_key: int = 0
        # Columns already warned about; keyers made by `sibling` share it, so a bad column warns once in all.
        self._warned: set[str] = set() if warned is None else warned
        # What `fit` learnt from the train data: per domain the columns it records, and for (domain, the
        # known part of a partly known row) the most common complete group that agrees with it.
        self.recorded: dict[str, tuple[str, ...]] = {}
        self.imputed: dict[tuple[str, str], str] = {}

    @classmethod
    def from_config(cls, config: Any) -> GroupKeyer:
        """The keyer a `FairGRPOConfig` describes (its demographic columns and kinds, age bins and max age).

        `AUTO` columns, not yet resolved against a dataset, are the default columns.
        """
        kinds = getattr(config, "demographic_kinds", None)
        return cls(read_demographic_columns(config.demographic_columns), config.age_bins, config.max_age, kinds=kinds)

    @property
    def specs(self) -> list[str]:
        """The columns as ``"name:kind"``: the same keyer wherever they are passed (audit, evaluate, inspect)."""
        return [f"{column}:{kind}" for column, kind in self.kinds.items()]

    def sibling(self) -> GroupKeyer:
        """A keyer with the same rules and counts of its own, sharing this one's warnings."""
        keyer = type(self)(self.specs, self.age_bins, self.max_age, warned=self._warned)
        keyer.recorded, keyer.imputed = self.recorded, self.imputed
        return keyer

    def fit(self, rows: Iterable[Mapping[str, Any]], domains: Iterable[str]) -> None:
        """Learn from the train rows which columns each domain records and the group a partly known row takes.

        Values are parsed without being counted or warned about: `key` counts them when it meets them.
        """
        by_domain: dict[str, list[tuple[str | None, ...]]] = {}
        for row, domain in zip(rows, domains, strict=True):
            by_domain.setdefault(domain, []).append(tuple(self._parsed(c, row.get(c)) for c in self.columns))
        self.recorded, self.imputed = {}, {}
        for domain, values in by_domain.items():
            recorded = [i for i in range(len(self.columns)) if any(v[i] is not None for v in values)]
            self.recorded[domain] = tuple(self.columns[i] for i in recorded)
            complete = Counter(
                tuple(f"{self.columns[i]}={v[i]}" for i in recorded)
                for v in values
                if all(v[i] is not None for i in recorded)
            )
            # Most common first (ties by key, so every process and every run agrees): setdefault keeps it.
            for parts, _ in sorted(complete.items(), key=lambda item: (-item[1], item[0])):
                for size in range(1, len(parts)):
                    for known in itertools.combinations(parts, size):
                        self.imputed.setdefault((domain, "|".join(known)), "|".join(parts))

    def _parsed(self, column: str, value: Any) -> str | None:
        try:
            return normalise_attribute(column, value, self.age_bins, self.max_age, self.kinds[column])
        except InvalidDemographic:
            return None

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(columns={self.specs!r}, age_bins={self.age_bins!r}, max_age={self.max_age!r})"

    def attribute(self, column: str, value: Any) -> str | None:
        """Normalised value of one attribute ("F", "a3", ...); None when missing or invalid (both counted)."""
        try:
            normalised = normalise_attribute(column, value, self.age_bins, self.max_age, self.kinds.get(column))
        except InvalidDemographic as err:
            self.invalid_counts[column] = self.invalid_counts.get(column, 0) + 1
            if column not in self._warned:
                self._warned.add(column)
                logger.warning(
                    "Column %r has an invalid value %r (%s); treating it as missing. "
                    "Further invalid values in this column are only counted.",
                    column,
                    value,
                    err,
                )
            return None
        if normalised is None:
            self.missing_counts[column] = self.missing_counts.get(column, 0) + 1
        return normalised

    def key(self, row: Mapping[str, Any], domain: str | None = None) -> str | None:
        """Group key of one row of `domain`: the attributes its domain records as "col=value", in column order.

        A partly known row takes its domain's most common agreeing complete group, or None (the module's
        docstring has the policy); without `fit` (or `domain`) every column counts, so it gets None.
        Every attribute is parsed, so the missing and invalid counts cover them all.
        """
        # An absent column is just missing for this row; the trainer checks dataset columns up front.
        values = [self.attribute(column, row.get(column)) for column in self.columns]
        self.rows_seen += 1
        recorded = self.recorded.get(domain, self.columns) if domain is not None else self.columns
        known = [f"{c}={v}" for c, v in zip(self.columns, values, strict=True) if v is not None and c in recorded]
        key = "|".join(known) or None
        if key is not None and len(known) < len(recorded):
            key = self.imputed.get((domain, key))  # type: ignore[arg-type]
        if key is None:
            self.rows_without_key += 1
        return key

    def keys(self, rows: Iterable[Mapping[str, Any]], domains: Iterable[str] | None = None) -> list[str | None]:
        if domains is None:
            return [self.key(row) for row in rows]
        return [self.key(row, domain) for row, domain in zip(rows, domains, strict=True)]

    def summary(self) -> dict[str, Any]:
        """Counts so far (copies, safe to log or serialise)."""
        return {
            "rows": self.rows_seen,
            "rows_without_key": self.rows_without_key,
            "missing": dict(self.missing_counts),
            "invalid": dict(self.invalid_counts),
        }

    def state_dict(self) -> dict[str, Any]:
        """The counts and the columns already warned about, so a resumed run continues them."""
        return {**self.summary(), "warned": sorted(self._warned)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rows_seen = int(state["rows"])
        self.rows_without_key = int(state["rows_without_key"])
        self.missing_counts = {**self.missing_counts, **{str(k): int(v) for k, v in state["missing"].items()}}
        self.invalid_counts = {**self.invalid_counts, **{str(k): int(v) for k, v in state["invalid"].items()}}
        # In place: sibling keyers share this set.
        self._warned.clear()
        self._warned.update(state.get("warned", ()))
