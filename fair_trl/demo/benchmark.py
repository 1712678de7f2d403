"""The demo's data: one synthetic benchmark, split by patient into pre-training, RL and evaluation parts.

* ``pretrain``: what the warm start (`fair_trl.demo.warmstart`) is trained on. Like public pre-training
  data it under-represents the disadvantaged groups: it keeps only rows with known demographics, and of
  the planted-disadvantaged ones a share ``pretrain_disadvantaged_keep``;
* ``rl``: the RL training pool, in the benchmark's natural mix (demographics hidden for some patients);
* ``eval``: held-out patients, large enough to see the planted groups (``eval_rows``).

Benchmark parameters are `SyntheticConfig` fields at their defaults unless ``-b key=value`` overrides
them (`parse_overrides`); the three sizes set ``num_rows``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from fair_trl.data.synthetic import SyntheticConfig, is_disadvantaged

__all__ = [
    "ORACLE_WEIGHT_COLUMN",
    "DemoData",
    "benchmark_config",
    "demo_data",
    "parse_overrides",
    "planted_flags",
    "with_oracle_weights",
]

ORACLE_WEIGHT_COLUMN = "oracle_weight"
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


def with_oracle_weights(dataset, config: SyntheticConfig):
    """Add `oracle_weight`: planted-disadvantaged rows (known demographics) weigh as much as all others."""
    flags = planted_flags(dataset, config)
    n_flagged = sum(flags)
    if n_flagged == 0:
        raise ValueError("no planted-disadvantaged rows with known demographics to oversample")
    heavy = (len(flags) - n_flagged) / n_flagged
    return dataset.add_column(ORACLE_WEIGHT_COLUMN, [heavy if f else 1.0 for f in flags])
