"""The demo's data: one synthetic benchmark, split by patient into pre-training, RL and evaluation parts.

* ``pretrain``: what the warm start (`fair_trl.demo.warmstart`) is trained on. Like public pre-training
  data it under-represents the disadvantaged groups: it keeps only rows with known demographics, and of
  the planted-disadvantaged ones a share ``pretrain_disadvantaged_keep``;
* ``rl``: the RL training pool, in the benchmark's natural mix (demographics hidden for some patients);
* ``eval``: held-out patients, large enough to see the planted groups (``eval_rows``).

Benchmark parameters are `SyntheticConfig` fields at their defaults unless ``-b key=value`` overrides
them (`parse_overrides`); the three sizes set ``num_rows``.

Two things here hold on any planting, not only the demo's: the positive control's sampling weights
(`oracle_weights`, one rule: `ORACLE_RULE`), and the check that the held-out part can see every planted
cell (`check_visible`, `VISIBILITY_RULE`), which `fair-trl demo` runs before training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from fair_trl.data.synthetic import SyntheticConfig, is_disadvantaged, planted_ground_truth
from fair_trl.groups import normalise_attribute

__all__ = [
    "MIN_VISIBLE_ROWS",
    "ORACLE_MAX_FACTOR",
    "ORACLE_RULE",
    "ORACLE_RULE_NAME",
    "ORACLE_WEIGHT_COLUMN",
    "VISIBILITY_RULE",
    "DemoData",
    "benchmark_config",
    "check_visible",
    "demo_data",
    "oracle_weights",
    "parse_overrides",
    "planted_cells",
    "planted_flags",
    "with_oracle_weights",
]

ORACLE_WEIGHT_COLUMN = "oracle_weight"
# The positive control's one rule, the same on any planting. "As often as the domain's most common
# unplanted cell" removes exactly what the reducible profile's gap comes from, the planted groups' rarity:
# no planted group is rarer than any other group of its domain. A constant share ("half the draws") means
# a mild boost for a large planted group and a flood of a few replayed rows for a small one; "as often as
# the average cell" left the planted groups rarer than the common ones and cut the gap too weakly to be
# seen with five seeds on any of three plantings. The cap stops a tiny cell's handful of RL rows from
# being replayed until the control memorises them instead of learning their rule.
ORACLE_MAX_FACTOR = 5.0
ORACLE_RULE_NAME = f"most common unplanted cell of its domain, at most {ORACLE_MAX_FACTOR:g}x"  # the trial log's name
ORACLE_RULE = (
    "within each domain, every planted cell (its rows with released demographics, split by the attributes "
    "planted there) is drawn as often as the domain's most common unplanted cell, at most "
    f"{ORACLE_MAX_FACTOR:g}x as often as its size alone would give; unplanted cells keep their relative sizes, "
    "and domains, and rows with hidden demographics, keep their natural share of the draws"
)
# Visibility: a planted cell's accuracy, measured on n held-out rows, has a binomial standard error of at
# most 0.5 / sqrt(n). The planting opens a gap of about 0.5 in exact accuracy at the warm start (planted
# about 0.35, the rest about 0.85), and the demo looks for cuts of about 30% of a gap, 0.15; a cell is
# visible when the 95% interval of its accuracy is no wider than that: 1.96 * 0.5 / sqrt(n) <= 0.15.
VISIBLE_HALF_WIDTH = 0.15
MIN_VISIBLE_ROWS = math.ceil((1.96 * 0.5 / VISIBLE_HALF_WIDTH) ** 2)  # 43
VISIBILITY_RULE = (
    f"a 95% interval of +-{VISIBLE_HALF_WIDTH:g} on its accuracy at worst (p = 0.5) needs "
    f"(1.96 * 0.5 / {VISIBLE_HALF_WIDTH:g})^2 rows"
)
# Set by the demo's own sizes, so not overridable with -b.
_DERIVED = ("num_rows",)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["key=value", ...]`` -> {key: value}, values read as YAML (``0.5``, ``true``, ``[age=a4]``)."""
    import yaml

    valid = [f.name for f in dataclasses.fields(SyntheticConfig) if f.init and f.name not in _DERIVED]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = (part.strip() for part in str(item).partition("="))
        if not sep or not key:
            raise ValueError(f"benchmark override {item!r} is not KEY=VALUE; keys: {valid}")
        if key not in valid:
            raise ValueError(f"unknown benchmark parameter {key!r} in {item!r}; valid parameters are {valid}")
        parsed = yaml.safe_load(value)
        out[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def benchmark_config(overrides: dict[str, Any], num_rows: int) -> SyntheticConfig:
    """The benchmark the demo builds; a bad value raises ValueError naming it and what was expected."""
    try:
        return SyntheticConfig.from_options(num_rows=num_rows, **overrides)
    except TypeError as error:
        raise ValueError(str(error)) from None


def planted_flags(dataset, config: SyntheticConfig) -> list[bool]:
    """Per row: planted-disadvantaged by its *released* demographics (False where they are hidden)."""
    rows = dataset.select_columns(["dataset", "age", "sex"]).to_list()
    return [r["age"] is not None and is_disadvantaged(r["dataset"], r["age"], r["sex"], config) for r in rows]


@dataclass(frozen=True)
class DemoData:
    config: SyntheticConfig
    pretrain: Any  # datasets.Dataset
    rl: Any
    eval: Any

    def summary(self) -> dict[str, Any]:
        """Rows and planted-disadvantaged rows per part, for the report."""
        out = {}
        for name in ("pretrain", "rl", "eval"):
            part = getattr(self, name)
            flags = planted_flags(part, self.config)
            out[name] = {"rows": len(part), "planted_disadvantaged": int(sum(flags))}
        return out


def demo_data(
    overrides: dict[str, Any],
    pretrain_rows: int,
    rl_rows: int,
    eval_rows: int,
    pretrain_disadvantaged_keep: float,
    data_seed: int,
) -> DemoData:
    """The three parts; built once per process for the same arguments (every run reads the same rows)."""
    return _demo_data(
        json.dumps(overrides, sort_keys=True), pretrain_rows, rl_rows, eval_rows, pretrain_disadvantaged_keep, data_seed
    )


@functools.lru_cache(maxsize=2)
def _demo_data(
    overrides_json: str, pretrain_rows: int, rl_rows: int, eval_rows: int, keep: float, data_seed: int
) -> DemoData:
    from fair_trl.data import build_dataset
    from fair_trl.data.schema import split_by_patient

    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(overrides_json).items()}
    total = pretrain_rows + rl_rows + eval_rows
    config = benchmark_config(overrides, total)
    built = build_dataset("synthetic", None, test_size=eval_rows / total, seed=data_seed, config=config)
    train = built["train"]
    share = pretrain_rows / (pretrain_rows + rl_rows)
    sides = split_by_patient(train["patient_id"], test_size=share, seed=data_seed + 1)
    pretrain = train.select([i for i, side in enumerate(sides) if side == "test"])
    rl = train.select([i for i, side in enumerate(sides) if side == "train"])

    # Known demographics only, and a fixed share of the planted-disadvantaged rows, drawn once.
    flags = planted_flags(pretrain, config)
    known = [age is not None for age in pretrain["age"]]
    rng = np.random.default_rng(data_seed + 2)
    draws = rng.random(len(pretrain))
    kept = [i for i in range(len(pretrain)) if known[i] and (not flags[i] or draws[i] < keep)]
    return DemoData(config=config, pretrain=pretrain.select(kept), rl=rl, eval=built["test"])


def _planted_attributes(config: SyntheticConfig) -> dict[str, tuple[str, ...]]:
    """Per domain, the attributes its planted groups are defined by ("age", "sex" or both; none if unplanted)."""
    truth = planted_ground_truth(config)["domains"]
    return {
        domain: tuple(a for a in ("sex", "age") if any(f"{a}=" in key for key in info["disadvantaged"]))
        for domain, info in truth.items()
    }


def _released(row: dict[str, Any], attributes: tuple[str, ...]) -> tuple[str, ...] | None:
    """The row's released groups for `attributes` (e.g. ("F", "a4")), None when any of them is hidden."""
    values = tuple(normalise_attribute(a, row[a]) for a in attributes)
    return None if any(v is None for v in values) else values


def oracle_weights(dataset, config: SyntheticConfig, max_factor: float = ORACLE_MAX_FACTOR) -> list[float]:
    """The positive control's sampling weight of every row (see `ORACLE_RULE`).

    Per domain, the rows with released demographics fall into cells by the attributes planted in that
    domain (age bins, sexes, or both). Each cell gets a mass: its size if unplanted; if planted, the size
    of the domain's largest unplanted cell, but at most `max_factor` times its own size (and never less
    than its own size). The masses are then scaled so the domain keeps its natural share of the draws,
    and rows with hidden demographics keep their natural weight.
    """
    rows = dataset.select_columns(["dataset", "age", "sex"]).to_list()
    attributes = _planted_attributes(config)
    weights = [1.0] * len(rows)
    cells: dict[str, dict[tuple[str, ...], list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, row in enumerate(rows):
        values = _released(row, attributes.get(row["dataset"], ()))
        if attributes.get(row["dataset"]) and values is not None:
            cells[row["dataset"]][values].append(i)
    for domain, by_value in cells.items():
        # A cell's rows share its groups, so they are all planted or none is.
        planted = {
            values: is_disadvantaged(domain, rows[members[0]]["age"], rows[members[0]]["sex"], config)
            for values, members in by_value.items()
        }
        unplanted_sizes = [len(m) for v, m in by_value.items() if not planted[v]]
        if not unplanted_sizes:  # every cell planted: nothing to be rarer than
            continue
        largest = max(unplanted_sizes)
        mass = {
            values: max(len(members), min(largest, max_factor * len(members))) if planted[values] else len(members)
            for values, members in by_value.items()
        }
        scale = sum(len(m) for m in by_value.values()) / sum(mass.values())  # the domain keeps its share
        for values, members in by_value.items():
            for i in members:
                weights[i] = scale * mass[values] / len(members)
    return weights


def with_oracle_weights(dataset, config: SyntheticConfig):
    """Add `oracle_weight` (`oracle_weights`); refuses a planting with no planted row to oversample."""
    if not any(planted_flags(dataset, config)):
        raise ValueError(
            f"no planted-disadvantaged rows with released demographics to oversample (disadvantaged="
            f"{list(config.disadvantaged)})"
        )
    return dataset.add_column(ORACLE_WEIGHT_COLUMN, oracle_weights(dataset, config))


def planted_cells(dataset, config: SyntheticConfig) -> dict[str, int]:
    """Rows of every planted (domain, group), e.g. "ham10000/age=a1": rows whose released demographics match it."""
    truth = planted_ground_truth(config)["domains"]
    rows = dataset.select_columns(["dataset", "age", "sex"]).to_list()
    counts: dict[str, int] = {}
    for domain, info in truth.items():
        if domain not in config.domains:
            continue
        for key in info["disadvantaged"]:
            parts = [part.split("=", 1) for part in key.split("|")]
            counts[f"{domain}/{key}"] = sum(
                r["dataset"] == domain and all(normalise_attribute(a, r[a]) == v for a, v in parts) for r in rows
            )
    return counts


def check_visible(dataset, config: SyntheticConfig, min_rows: int = MIN_VISIBLE_ROWS) -> dict[str, int]:
    """Refuse a planting the held-out part cannot see (`VISIBILITY_RULE`); returns every cell's rows."""
    counts = planted_cells(dataset, config)
    if not counts:
        raise ValueError(
            f"nothing is planted: disadvantaged={list(config.disadvantaged)} names no group of the domains "
            f"{list(config.domains)}, so there is no gap to measure"
        )
    small = {cell: n for cell, n in counts.items() if n < min_rows}
    if small:
        listed = ", ".join(f"{cell} {n} rows" for cell, n in sorted(small.items(), key=lambda kv: kv[1]))
        raise ValueError(
            f"planting not visible at this budget: {listed} of {len(dataset)} held-out rows, fewer than the "
            f"{min_rows} a planted cell needs (min_cell_rows; its default {MIN_VISIBLE_ROWS}: {VISIBILITY_RULE}). "
            "Raise --eval_rows, or plant groups with more rows (-b disadvantaged=[...], -b min_domain_fraction=...)."
        )
    return counts
