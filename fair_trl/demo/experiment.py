"""The demo experiment: GRPO vs FairGRPO (and a positive control, variants, baselines), warm-started.

Per seed, one warm start (`fair_trl.demo.warmstart`: SFT on the pre-training part, which
under-represents the disadvantaged groups) is shared by every method. Each method then trains it with
`FairGRPOTrainer` and the strict `accuracy_reward` on the RL part for a fixed number of steps and, at
evenly spaced checkpoints, answers every held-out prompt greedily (`fair_trl.demo.evaluation`). Step 0
is the warm start itself, evaluated once per seed.

Runs are independent, so `run_experiment` spreads them over spawned worker processes with one torch
thread each, also when ``workers=1``: every run sees the same numerics whatever the worker count.
Everything a run returns is plain JSON, so the report can be rebuilt from ``runs.json``.

Methods (`METHODS`, built on `fair_trl.advantages.REGISTRY`):

* main: ``grpo``, ``fair_grpo`` (the paper's), ``fair_grpo_nd``; beyond the paper (``GUIDED_METHODS``, not in
  the defaults), ``guided_sampling`` (GRPO drawing prompts by FairGRPO's weights) and ``fair_grpo_guided``
  (FairGRPO with that sampling);
* control: ``oracle_oversampling``, GRPO drawing each planted cell (a domain's rows of a group the
  benchmark planted as disadvantaged) as often as the average cell of its domain, at most 5x its
  natural share (`fair_trl.demo.benchmark.ORACLE_RULE`, the same rule on any planting). It uses
  knowledge no method has; the instrument is valid only when it cuts the gap (`fair_trl.demo.instrument`);
* variants (``--variants``): FairGRPO with a floor on the mean reward in T, a cap on the weight ratio,
  or statistics over a recent window of steps;
* baselines (``--baselines``): RLOO, REINFORCE++, GRPO + Group DRO, GRPO + Resampling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fair_trl.advantages import get_spec
from fair_trl.demo.benchmark import (
    MIN_VISIBLE_ROWS,
    ORACLE_WEIGHT_COLUMN,
    check_visible,
    demo_data,
    parse_overrides,
    planted_flags,
    with_oracle_weights,
)

__all__ = [
    "BASELINE_METHODS",
    "DEMO_BENCHMARK",
    "DEFAULT_METHODS",
    "GUIDED_METHODS",
    "METHODS",
    "NOISE_METHODS",
    "VARIANT_METHODS",
    "ExperimentSettings",
    "Method",
    "run_experiment",
    "run_one",
    "run_warm_start",
]


@dataclass(frozen=True)
class Method:
    label: str
    estimator: str  # a name in fair_trl.advantages.REGISTRY
    role: str  # "main", "control", "variant", "baseline" or "noise"
    description: str
    config: dict[str, Any] = field(default_factory=dict)  # FairGRPOConfig fields
    # Noise checks only: GRPO again with the seed of its completions' sampling (and of its prompt order)
    # moved, the warm start kept; the spread of its differences to GRPO is what pairing cannot remove.
    sampling_seed_shift: int = 0
    order_seed_shift: int = 0


def _method(estimator: str, role: str, description: str, label: str | None = None, **config: Any) -> Method:
    """A demo method on a registered estimator, named as the registry names it unless it adds settings."""
    return Method(label or get_spec(estimator).display_name, estimator, role, description, config)


METHODS: dict[str, Method] = {
    "grpo": _method("grpo", "main", "TRL's group-normalised advantages"),
    "fair_grpo": _method("fair_grpo", "main", "the paper's FairGRPO, with demographics"),
    "fair_grpo_nd": _method("fair_grpo_nd", "main", "FairGRPO with latent groups only"),
    "oracle_oversampling": _method(
        "grpo",
        "control",
        "positive control: each planted cell drawn as often as its domain's average cell (at most 5x)",
        label="GRPO + oracle oversampling",
        sampling_weight_column=ORACLE_WEIGHT_COLUMN,
    ),
    "guided_sampling": _method(
        "grpo",
        "main",
        "beyond the paper: prompts drawn by FairGRPO's weight of their (domain, group), from the rewards so far",
        label="GRPO + FairGRPO-guided sampling",
        guided_sampling=True,
    ),
    "fair_grpo_guided": _method(
        "fair_grpo",
        "main",
        "beyond the paper: FairGRPO, its prompts drawn by its own weights",
        label="FairGRPO + guided sampling",
        guided_sampling=True,
    ),
    "fair_grpo_floor": _method(
        "fair_grpo", "variant", "mean reward in T floored at 0.3", "FairGRPO, rbar floor 0.3", fair_reward_floor=0.3
    ),
    "fair_grpo_cap": _method(
        "fair_grpo",
        "variant",
        "no prompt weighs more than 4x the lightest in its batch",
        "FairGRPO, weight ratio <= 4",
        fair_max_weight_ratio=4.0,
    ),
    "fair_grpo_window": _method(
        "fair_grpo",
        "variant",
        "N and rbar over the last 20 steps instead of the whole run",
        "FairGRPO, last-20-step stats",
        fair_stats_window=20,
    ),
    "rloo": _method("rloo", "baseline", "leave-one-out baseline"),
    "reinforce_pp": _method("reinforce_pp", "baseline", "global batch normalisation"),
    "group_dro": _method("group_dro", "baseline", "exponentiated-gradient group weights"),
    "grpo_resampling": _method(
        "grpo", "baseline", "every (domain, group) drawn equally often", "GRPO + Resampling", balanced_sampling=True
    ),
}
# GRPO against itself (`--noise_check`): how far two runs of one method differ when only chance differs.
NOISE_SEED_SHIFT = 1000
METHODS["grpo_resampled"] = Method(
    "GRPO, other sampling seed", "grpo", "noise", "GRPO again: same warm start and prompt order, other completions",
    sampling_seed_shift=NOISE_SEED_SHIFT,
)  # fmt: skip
METHODS["grpo_reordered"] = Method(
    "GRPO, other sampling and order seeds", "grpo", "noise",
    "GRPO again: same warm start, other prompt order and completions",
    sampling_seed_shift=NOISE_SEED_SHIFT, order_seed_shift=NOISE_SEED_SHIFT,
)  # fmt: skip
NOISE_METHODS = tuple(name for name, m in METHODS.items() if m.role == "noise")
# The demo's benchmark, as overrides of SyntheticConfig (a user's -b items follow, and win): chosen with
# instrument trials (GRPO and the positive control only; see fair_trl.demo.instrument).
# - Age only (a1 and a4, 6% and 14% of patients): the planted groups are rare, the setting of the paper;
#   the sex=F groups the benchmark plants by default are half of their domains.
# - Every domain at least 10% of the rows: with Table 1's 2% floor four domains had 64-109 held-out
#   rows (of 3,000), a1 cells of 4-7 rows, and their max-min F1 was mostly noise.
DEMO_BENCHMARK = ("disadvantaged=[age=a1, age=a4]", "min_domain_fraction=0.1")
# The guided methods are main methods but left out of the defaults: the quick demo has no time for them.
GUIDED_METHODS = ("guided_sampling", "fair_grpo_guided")
DEFAULT_METHODS = ("grpo", "fair_grpo", "fair_grpo_nd", "oracle_oversampling")
VARIANT_METHODS = tuple(name for name, m in METHODS.items() if m.role == "variant")
BASELINE_METHODS = tuple(name for name, m in METHODS.items() if m.role == "baseline")


@dataclass
class ExperimentSettings:
    """What a demo run builds and trains. `fair-trl demo --help` lists these fields."""

    methods: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata={"help": f"Methods to run, from {list(METHODS)}; must include grpo."},
    )
    seeds: int = field(default=5, metadata={"help": "Seeds per method (each: its own warm start and RL seed)."})
    secondary_seeds: int | None = field(
        default=None,
        metadata={"help": "Seeds of the variants and baselines (their first seeds, paired with GRPO's); "
                  "default: --seeds. At most --seeds."},
    )  # fmt: skip
    steps: int = field(default=100, metadata={"help": "RL steps per run."})
    eval_every: int = field(default=50, metadata={"help": "RL steps between evaluations of the held-out set."})
    prompts_per_step: int = field(default=16, metadata={"help": "Prompts per RL step."})
    num_generations: int = field(default=4, metadata={"help": "Completions per prompt (GRPO's group size)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of the RL stage."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the RL rollouts."})
    max_completion_length: int = field(default=16, metadata={"help": "Most tokens per completion and answer."})
    sft_steps: int = field(default=600, metadata={"help": "Steps of the warm start (SFT on the pre-training part)."})
    sft_learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of the warm start."})
    sft_batch_size: int = field(default=32, metadata={"help": "Rows per warm-start step."})
    pretrain_rows: int = field(default=2500, metadata={"help": "Rows (before filtering) of the pre-training part."})
    pretrain_disadvantaged_keep: float = field(
        default=0.5,
        metadata={"help": "Share of the planted-disadvantaged rows that the pre-training part keeps."},
    )
    rl_rows: int = field(default=2500, metadata={"help": "Rows of the RL training part."})
    # 11,000: at 10,000 two of the demo's age=a1 cells held 42 rows, one short of MIN_VISIBLE_ROWS.
    eval_rows: int = field(default=11_000, metadata={"help": "Rows of the held-out evaluation part."})
    min_cell_rows: int = field(
        default=MIN_VISIBLE_ROWS,
        metadata={
            "help": "Fewest held-out rows a planted (domain, group) cell may have; the demo refuses a planting with "
            f"a smaller one before training. {MIN_VISIBLE_ROWS} gives a 95%% interval of +-0.15 on the cell's "
            "accuracy at worst. 0 turns the check off (smoke tests only: such cells are mostly noise)."
        },
    )
    benchmark: list[str] = field(
        default_factory=lambda: list(DEMO_BENCHMARK),
        metadata={
            "help": "Benchmark overrides KEY=VALUE (SyntheticConfig fields, values read as YAML), e.g. "
            "-b profile=noisy_shift -b 'disadvantaged=[age=a4]'.",
            "aliases": ["-b"],
            "action": "extend",
        },
    )
    data_seed: int = field(default=0, metadata={"help": "Seed of the benchmark's rows and splits."})
    n_bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples for the intervals over seeds."})
    workers: int = field(default=2, metadata={"help": "Runs in parallel, one CPU thread each."})

    def __post_init__(self) -> None:
        self.methods = list(dict.fromkeys(self.methods))
        self.benchmark = [str(item) for item in self.benchmark]
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        if "grpo" not in self.methods:
            raise ValueError("methods must include 'grpo': every difference is reported against it")
        for name in ("seeds", "steps", "eval_every", "prompts_per_step", "workers", "sft_steps", "sft_batch_size",
                     "max_completion_length", "pretrain_rows", "rl_rows", "eval_rows"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.secondary_seeds is not None and not 1 <= self.secondary_seeds <= self.seeds:
            # More would train runs no GRPO run of the same seed can be paired with.
            raise ValueError(f"secondary_seeds must be in [1, seeds={self.seeds}], got {self.secondary_seeds}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (group normalisation), got {self.num_generations}")
        if not 0.0 <= self.pretrain_disadvantaged_keep <= 1.0:
            raise ValueError(f"pretrain_disadvantaged_keep must be in [0, 1], got {self.pretrain_disadvantaged_keep}")
        if self.min_cell_rows < 0:
            raise ValueError(f"min_cell_rows must be >= 0, got {self.min_cell_rows}")
        for name in ("learning_rate", "sft_learning_rate", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        self.config()  # a bad benchmark override fails here, naming the parameter

    def seeds_for(self, method: str) -> int:
        """Seeds a method runs: `secondary_seeds` for variants and baselines, `seeds` for the rest."""
        if self.secondary_seeds is not None and METHODS[method].role in ("variant", "baseline"):
            return self.secondary_seeds
        return self.seeds

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "methods": list(self.methods)}

    def overrides(self) -> dict[str, Any]:
        return parse_overrides(self.benchmark)

    def config(self):
        from fair_trl.demo.benchmark import benchmark_config

        return benchmark_config(self.overrides(), self.pretrain_rows + self.rl_rows + self.eval_rows)

    def data(self):
        return demo_data(
            self.overrides(),
            self.pretrain_rows,
            self.rl_rows,
            self.eval_rows,
            self.pretrain_disadvantaged_keep,
            self.data_seed,
        )

    def check_visible(self) -> dict[str, int]:
        """Held-out rows of every planted cell; ValueError naming the cells below `min_cell_rows`."""
        data = self.data()
        return check_visible(data.eval, data.config, self.min_cell_rows)

    def checkpoints(self) -> list[int]:
        steps = list(range(0, self.steps, self.eval_every))
        return [*steps, self.steps]

    def warm_start_key(self) -> str:
        """What the warm starts depend on: the data, the SFT settings and the step-0 evaluation."""
        from fair_trl.demo.warmstart import cache_key

        return cache_key(
            {
                "benchmark": dataclasses.asdict(self.config()),
                "sizes": [self.pretrain_rows, self.rl_rows, self.eval_rows],
                "keep": self.pretrain_disadvantaged_keep,
                "data_seed": self.data_seed,
                "sft": [self.sft_steps, self.sft_learning_rate, self.sft_batch_size],
                "max_new_tokens": self.max_completion_length,
            }
        )

    def run_path(self, cache_dir: str | Path, method: str, seed: int) -> Path:
        """Where a finished RL run is kept: next to its warm start, keyed by everything else it depends on."""
        from fair_trl.demo.warmstart import cache_key

        spec = METHODS[method]
        rl = ("steps", "eval_every", "prompts_per_step", "num_generations", "learning_rate", "temperature",
              "max_completion_length")  # fmt: skip
        key = cache_key(
            {
                "rl": {k: getattr(self, k) for k in rl},
                "estimator": spec.estimator,
                "config": spec.config,
                "seed_shifts": [spec.sampling_seed_shift, spec.order_seed_shift],
            }
        )
        return Path(cache_dir) / self.warm_start_key() / "runs" / f"{method}-{key}-seed{seed}.json"


# ---------------------------------------------------------------------------------------------
# One warm start, one RL run
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _evaluator(settings_json: str):
    """The held-out evaluator, built once per process (its processed inputs are reused by every run)."""
    from fair_trl.demo.evaluation import Evaluator
    from fair_trl.models import build_tiny_vlm

    settings = ExperimentSettings(**json.loads(settings_json))
    data = settings.data()
    rows = list(data.eval)
    flags = planted_flags(data.eval, data.config)
    planted = [None if r["age"] is None else ("planted" if f else "other") for r, f in zip(rows, flags, strict=True)]
    _, processor = build_tiny_vlm()
    return Evaluator(processor, rows, planted, settings.max_completion_length)


def _evaluator_for(settings: ExperimentSettings):
    # Only what the evaluation depends on, so every method and seed shares one evaluator.
    keep = ("pretrain_rows", "rl_rows", "eval_rows", "pretrain_disadvantaged_keep", "benchmark", "data_seed",
            "max_completion_length")  # fmt: skip
    return _evaluator(json.dumps({k: getattr(settings, k) for k in keep}, sort_keys=True))


def run_warm_start(seed: int, settings: ExperimentSettings, cache_dir: str | Path) -> dict[str, Any]:
    """The warm start of `seed` (trained now or read from the cache) and its step-0 evaluation."""
    from fair_trl.demo.warmstart import warm_start

    return warm_start(
        seed,
        settings.data().pretrain,
        cache_dir,
        settings.warm_start_key(),
        steps=settings.sft_steps,
        learning_rate=settings.sft_learning_rate,
        batch_size=settings.sft_batch_size,
        evaluate=lambda model, _: _evaluator_for(settings).evaluate(model),
    )


def run_one(
    method: str,
    seed: int,
    settings: ExperimentSettings,
    warm: dict[str, Any],
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """RL-train the warm start `warm` with one method; return its checkpoints, curves and FairGRPO weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from fair_trl.config import FairGRPOConfig
    from fair_trl.demo.reward import RecordingReward
    from fair_trl.demo.warmstart import load_warm_start
    from fair_trl.trainer import FairGRPOTrainer

    spec = METHODS[method]
    data = settings.data()
    train = data.rl
    if spec.config.get("sampling_weight_column") == ORACLE_WEIGHT_COLUMN:
        train = with_oracle_weights(train, data.config)
    model, processor = load_warm_start(warm["path"])
    evaluator = _evaluator_for(settings)
    rewards = RecordingReward()
    checkpoints: list[dict[str, Any]] = [{"step": 0, **warm["evaluation"]}]
    weights: list[dict[str, Any]] = []
    wanted = set(settings.checkpoints()) - {0}

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            estimator = trainer.fair_estimator
            if estimator is not None and estimator.last_info:
                weights.append({"step": state.global_step, "group_weight": estimator.last_info["group_weight"]})
            if state.global_step in wanted:
                checkpoints.append({"step": state.global_step, **evaluator.evaluate(kwargs["model"])})
            if on_step is not None:
                on_step()

    started, cpu_started = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as scratch:
        config = FairGRPOConfig(
            output_dir=scratch,
            advantage_estimator=spec.estimator,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
            num_generations=settings.num_generations,
            max_completion_length=settings.max_completion_length,
            temperature=settings.temperature,
            max_steps=settings.steps,
            logging_steps=settings.steps + 1,
            save_strategy="no",
            report_to="none",
            fairness_logging_steps=0,
            disable_tqdm=True,
            # Every method of a seed draws its prompts in one order (the weighted ones coupled to it,
            # `fair_trl.sampling.BalancedRepeatSampler`) and its first completions from one seed.
            seed=seed + spec.sampling_seed_shift,
            data_seed=seed + spec.order_seed_shift,
            **spec.config,
        )
        trainer = FairGRPOTrainer(
            model=model, reward_funcs=rewards, args=config, train_dataset=train, processing_class=processor
        )
        for quiet in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(quiet)
        trainer.add_callback(Probe())
        trainer.train()
    return {
        "method": method,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "checkpoints": checkpoints,
        "train_reward": rewards.curves(max(settings.eval_every // 5, 1)),
        "group_weights": weights,
    }


# ---------------------------------------------------------------------------------------------
# All runs
# ---------------------------------------------------------------------------------------------


def _keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of handing it back to the system at once.

    Every training step allocates and frees the same few-megabyte tensors; by default glibc serves
    them with fresh mappings that the kernel zero-fills page by page, which cost a fifth of a warm
    start's CPU time. Numerics are unchanged. Elsewhere than glibc this does nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, TypeError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 1 << 30)


def _quiet_worker() -> None:
    import torch
    from transformers.utils import logging as hf_logging

    _keep_freed_memory()

    # Two one-thread runs side by side beat one two-thread run: the tiny model's ops are too small
    # for intra-op parallelism to pay. One thread also fixes the order of every reduction.
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _warm_job(seed: int, settings: ExperimentSettings, cache_dir: str) -> dict[str, Any]:
    return run_warm_start(seed, settings, cache_dir)


def _rl_job(method: str, seed: int, settings: ExperimentSettings, warm: dict[str, Any], queue) -> dict[str, Any]:
    return run_one(method, seed, settings, warm, on_step=lambda: queue.put(1))


def _save_run(path: Path, run: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(run))
    staging.replace(path)  # atomic: a killed demo never leaves half a run behind


def run_experiment(
    settings: ExperimentSettings, cache_dir: str | Path, progress: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(warm starts by seed, every (method, seed) run in a fixed order), whatever order workers finish in.

    A seed's RL runs are queued as soon as its warm start is ready, so workers never wait for all of them.
    A run already finished with the same settings and code is read from `cache_dir` (``"cached": True``).
    """
    import multiprocessing
    import queue as queue_module

    from tqdm.auto import tqdm

    jobs = [(m, seed) for seed in range(settings.seeds) for m in settings.methods if seed < settings.seeds_for(m)]
    bar = tqdm(total=len(jobs) * settings.steps, desc="RL", unit="step", disable=not progress)
    warm: dict[int, dict[str, Any]] = {}
    results: dict[tuple[str, int], dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")  # fork after torch/TRL imports is not safe
    with (
        context.Manager() as manager,
        ProcessPoolExecutor(settings.workers, mp_context=context, initializer=_quiet_worker) as pool,
    ):
        steps = manager.Queue()
        pending = {
            pool.submit(_warm_job, seed, settings, str(cache_dir)): ("warm", seed) for seed in range(settings.seeds)
        }
        while pending:
            with contextlib.suppress(queue_module.Empty):
                bar.update(steps.get(timeout=0.5))
            done, _ = wait(pending, timeout=0, return_when=FIRST_COMPLETED)
            for future in done:
                kind, key = pending.pop(future)
                result = future.result()  # re-raises a worker's error here
                if kind == "warm":
                    warm[key] = result
                    bar.set_postfix_str(f"warm start {key} {'cached' if result['cached'] else 'trained'}")
                    for method in (m for m, seed in jobs if seed == key):
                        saved = settings.run_path(cache_dir, method, key)
                        if saved.is_file():
                            results[(method, key)] = {**json.loads(saved.read_text()), "cached": True}
                            bar.update(settings.steps)
                        else:
                            job = pool.submit(_rl_job, method, key, settings, result, steps)
                            pending[job] = ("rl", (method, key))
                else:
                    results[key] = result
                    _save_run(settings.run_path(cache_dir, *key), result)
                    bar.set_postfix_str(f"done {key[0]} seed {key[1]}")
        while not steps.empty():
            bar.update(steps.get())
    bar.close()
    return [warm[seed] for seed in range(settings.seeds)], [results[job] for job in jobs]
