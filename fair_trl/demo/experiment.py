"""The demo experiment: GRPO vs FairGRPO (and controls, variants, baselines) on the synthetic benchmark.

Each run trains the tiny VLM from scratch with `FairGRPOTrainer` for a fixed number of steps and, at
evenly spaced checkpoints, answers every test prompt greedily and scores the answers with the suite
(`compute_fairness`, per demographic attribute). Runs are independent, so `run_experiment` spreads them
over worker processes (one torch thread each: the tiny model gains nothing from more). Everything a
run returns is plain JSON, so the report can be rebuilt from `runs.json` without training again.

Methods (`METHODS`):

* main: ``grpo``, ``fair_grpo`` (the paper-faithful default), ``fair_grpo_nd``;
* control: ``oracle_oversampling``, GRPO drawing the rows the benchmark planted as disadvantaged as
  often as all others together. It uses knowledge no method has; if even it does not shrink the gap,
  the benchmark cannot show a gap reduction at this budget and a null result for FairGRPO means little;
* variants (ablation): FairGRPO with a floor on the mean reward in T, a cap on the weight ratio, or
  statistics over a recent window of steps;
* baselines (on request): RLOO, REINFORCE++, GRPO + Group DRO, GRPO + Resampling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fair_trl.advantages import get_spec
from fair_trl.demo.reward import jaccard_reward, mentioned_labels
from fair_trl.groups import normalise_attribute
from fair_trl.labels import canonical_labels
from fair_trl.metrics import SUMMARY_KEYS, compute_fairness, to_label_set

__all__ = [
    "ATTRIBUTES",
    "BASELINE_METHODS",
    "DEFAULT_METHODS",
    "METHODS",
    "ExperimentSettings",
    "Method",
    "run_experiment",
    "run_one",
]

ATTRIBUTES = ("age", "sex")
ORACLE_WEIGHT_COLUMN = "oracle_weight"


@dataclass(frozen=True)
class Method:
    label: str
    estimator: str  # a name in fair_trl.advantages.REGISTRY
    role: str  # "main", "control", "variant" or "baseline"
    description: str
    config: dict[str, Any] = field(default_factory=dict)  # FairGRPOConfig fields


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
        "positive control: planted-disadvantaged rows drawn as often as all others together",
        label="GRPO + oracle oversampling",
        sampling_weight_column=ORACLE_WEIGHT_COLUMN,
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
DEFAULT_METHODS = tuple(name for name, m in METHODS.items() if m.role != "baseline")
BASELINE_METHODS = tuple(name for name, m in METHODS.items() if m.role == "baseline")


@dataclass
class ExperimentSettings:
    """What a demo run trains and how; the benchmark itself is `SyntheticConfig` at its defaults."""

    methods: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata={"help": f"Methods to run, from {list(METHODS)}; must include grpo."},
    )
    seeds: int = field(default=4, metadata={"help": "Seeds per method (each seed: its own data order and init)."})
    steps: int = field(default=160, metadata={"help": "Training steps per run."})
    eval_every: int = field(default=32, metadata={"help": "Steps between evaluations of the test split."})
    prompts_per_step: int = field(default=16, metadata={"help": "Prompts per training step."})
    num_generations: int = field(default=4, metadata={"help": "Completions per prompt (GRPO's group size)."})
    learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of every run."})
    max_completion_length: int = field(default=4, metadata={"help": "Most tokens per completion."})
    num_rows: int = field(default=2000, metadata={"help": "Rows of the synthetic benchmark (train and test)."})
    data_seed: int = field(default=0, metadata={"help": "Seed of the synthetic benchmark's rows."})
    n_bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples for the intervals over seeds."})
    workers: int = field(default=2, metadata={"help": "Runs in parallel, one CPU thread each."})

    def __post_init__(self) -> None:
        self.methods = list(self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        if "grpo" not in self.methods:
            raise ValueError("methods must include 'grpo': every difference is reported against it")
        for name in ("seeds", "steps", "eval_every", "prompts_per_step", "num_generations", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (group normalisation), got {self.num_generations}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "methods": list(self.methods)}

    def checkpoints(self) -> list[int]:
        steps = list(range(0, self.steps, self.eval_every))
        return [*steps, self.steps]


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def demo_splits(settings: ExperimentSettings):
    return _synthetic_splits(settings.num_rows, settings.data_seed)


@functools.lru_cache(maxsize=2)
def _synthetic_splits(num_rows: int, seed: int):
    # Built once per worker process, not once per run: every run reads the same immutable rows.
    from fair_trl.data import build_dataset

    return build_dataset("synthetic", None, num_rows=num_rows, seed=seed)


def with_oracle_weights(dataset):
    """Add `oracle_weight`: planted-disadvantaged rows (known demographics) weigh as much as all others."""
    from fair_trl.data.synthetic import is_disadvantaged

    flags = [
        row["age"] is not None and is_disadvantaged(row["dataset"], row["age"], row["sex"])
        for row in dataset.select_columns(["dataset", "age", "sex"]).to_list()
    ]
    n_flagged = sum(flags)
    if n_flagged == 0:
        raise ValueError("no planted-disadvantaged rows with known demographics to oversample")
    heavy = (len(flags) - n_flagged) / n_flagged
    return dataset.add_column(ORACLE_WEIGHT_COLUMN, [heavy if f else 1.0 for f in flags])


def attribute_group(attribute: str, row: dict[str, Any]) -> str | None:
    """The row's group for one attribute (age bin "a1".."a4" or sex "F"/"M"), None when unknown."""
    return normalise_attribute(attribute, row.get(attribute))


class RolloutRewards:
    """The training reward, also kept per (step, demographic group) for the learning curves."""

    def __init__(self) -> None:
        self.sums: dict[tuple[int, str], list[float]] = defaultdict(lambda: [0.0, 0])
        self.__name__ = "accuracy_reward"

    def __call__(self, completions, solution, dataset, sex, age, trainer_state, **_) -> list[float]:
        rewards = []
        for completion, answer, name, s, a in zip(completions, solution, dataset, sex, age, strict=True):
            reward = jaccard_reward(completion, answer, name)
            for attribute, group in (("age", attribute_group("age", {"age": a})), ("sex", s)):
                if group is not None:
                    cell = self.sums[(trainer_state.global_step, f"{attribute}={group}")]
                    cell[0] += reward
                    cell[1] += 1
            rewards.append(reward)
        return rewards

    def curves(self, bucket: int) -> dict[str, list[list[float]]]:
        """{group: [[bucket start step, mean reward], ...]} over buckets of `bucket` steps."""
        merged: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
        for (step, group), (total, count) in self.sums.items():
            cell = merged[group][step // bucket * bucket]
            cell[0] += total
            cell[1] += count
        return {
            group: [[start, total / count] for start, (total, count) in sorted(buckets.items())]
            for group, buckets in sorted(merged.items())
        }


class TestSetEvaluator:
    """Greedy answers to every test prompt, scored with the suite per attribute."""

    def __init__(self, processor, test_rows: list[dict[str, Any]], max_new_tokens: int, batch_size: int = 256):
        self.processor = processor
        self.rows = test_rows
        self.max_new_tokens = max_new_tokens
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        # Inputs are built once: the test set does not change between checkpoints.
        self.batches = []
        for start in range(0, len(test_rows), batch_size):
            chunk = test_rows[start : start + batch_size]
            texts = [
                processor.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in chunk
            ]
            self.batches.append(
                processor(text=texts, images=[[r["image"]] for r in chunk], padding=True, return_tensors="pt")
            )

    def answers(self, model) -> list[str]:
        import torch

        was_training = model.training
        model.eval()
        out: list[str] = []
        with torch.no_grad():
            for inputs in self.batches:
                generated = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
                new_tokens = generated[:, inputs["input_ids"].shape[1] :]
                out += self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        model.train(was_training)
        return out

    def evaluate(self, model) -> dict[str, Any]:
        answers = self.answers(model)
        predictions = [
            mentioned_labels(a, canonical_labels(r["dataset"]) or ()) for a, r in zip(answers, self.rows, strict=True)
        ]
        references = [to_label_set(r["solution"]) for r in self.rows]
        datasets = [r["dataset"] for r in self.rows]
        classes = {name: canonical_labels(name) for name in set(datasets)}
        result = {}
        for attribute in ATTRIBUTES:
            groups = [attribute_group(attribute, r) for r in self.rows]
            result[attribute] = compact(compute_fairness(predictions, references, datasets, groups, classes))
        return result


def compact(fairness: dict[str, Any]) -> dict[str, Any]:
    """The parts of a `compute_fairness` result the report uses, as JSON-ready values."""
    return {
        **{key: float(fairness[key]) for key in SUMMARY_KEYS},
        "group_f1": {str(g): v["f1"] for g, v in fairness["group_values"].items()},
        "per_group_f1": {
            name: {str(g): s["f1"] for g, s in groups.items()} for name, groups in fairness["per_group"].items()
        },
    }


def run_one(
    method: str, seed: int, settings: ExperimentSettings, on_step: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Train one method from scratch with one seed; return its checkpoints, curves and scale factors."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from fair_trl.config import FairGRPOConfig
    from fair_trl.models import build_tiny_vlm
    from fair_trl.trainer import FairGRPOTrainer

    spec = METHODS[method]
    splits = demo_splits(settings)
    train = splits["train"]
    if spec.config.get("sampling_weight_column") == ORACLE_WEIGHT_COLUMN:
        train = with_oracle_weights(train)
    model, processor = build_tiny_vlm(seed=seed)
    evaluator = TestSetEvaluator(processor, list(splits["test"]), settings.max_completion_length)
    rewards = RolloutRewards()
    checkpoints: list[dict[str, Any]] = []
    scale_factors: list[dict[str, Any]] = []
    wanted = set(settings.checkpoints())

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            checkpoints.append({"step": 0, **evaluator.evaluate(kwargs["model"])})

        def on_step_end(self, args, state, control, **kwargs):
            estimator = trainer.fair_estimator
            if estimator is not None and estimator.last_info:
                info = estimator.last_info
                scale_factors.append({"step": state.global_step, "group_weight": info["group_weight"]})
            if state.global_step in wanted:
                checkpoints.append({"step": state.global_step, **evaluator.evaluate(kwargs["model"])})
            if on_step is not None:
                on_step()

    started = time.perf_counter()
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
            max_steps=settings.steps,
            logging_steps=settings.steps + 1,
            save_strategy="no",
            report_to="none",
            fairness_logging_steps=0,
            disable_tqdm=True,
            seed=seed,
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
        "checkpoints": checkpoints,
        "train_reward": rewards.curves(settings.eval_every // 2 or 1),
        "scale_factors": scale_factors,
    }


# ---------------------------------------------------------------------------------------------
# All runs
# ---------------------------------------------------------------------------------------------


def _quiet_worker() -> None:
    import torch
    from transformers.utils import logging as hf_logging

    # Two one-thread runs side by side beat one two-thread run: the tiny model's ops are too small
    # for intra-op parallelism to pay.
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()


def _run_in_worker(method: str, seed: int, settings: ExperimentSettings, queue) -> dict[str, Any]:
    _quiet_worker()
    return run_one(method, seed, settings, on_step=lambda: queue.put(1))


def run_experiment(settings: ExperimentSettings, progress: bool = True) -> list[dict[str, Any]]:
    """Every (method, seed) run, in a fixed order whatever order the workers finish in."""
    from tqdm.auto import tqdm

    jobs = [(method, seed) for seed in range(settings.seeds) for method in settings.methods]
    bar = tqdm(total=len(jobs) * settings.steps, desc="training", unit="step", disable=not progress)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    if settings.workers == 1:
        for method, seed in jobs:
            bar.set_postfix_str(f"{method} seed {seed}")
            results[(method, seed)] = run_one(method, seed, settings, on_step=lambda: bar.update(1))
    else:
        _run_parallel(jobs, settings, bar, results)
    bar.close()
    return [results[job] for job in jobs]


def _run_parallel(
    jobs: Sequence[tuple[str, int]],
    settings: ExperimentSettings,
    bar,
    results: dict[tuple[str, int], dict[str, Any]],
) -> None:
    import multiprocessing
    import queue as queue_module

    context = multiprocessing.get_context("spawn")  # fork after torch/TRL imports is not safe
    with context.Manager() as manager, ProcessPoolExecutor(settings.workers, mp_context=context) as pool:
        steps = manager.Queue()
        futures = {pool.submit(_run_in_worker, m, s, settings, steps): (m, s) for m, s in jobs}
        pending = set(futures)
        while pending:
            with contextlib.suppress(queue_module.Empty):
                bar.update(steps.get(timeout=0.5))
            for future in [f for f in pending if f.done()]:
                pending.discard(future)
                results[futures[future]] = future.result()  # re-raises a worker's error here
                method, seed = futures[future]
                bar.set_postfix_str(f"done {method} seed {seed}")
        while not steps.empty():
            bar.update(steps.get())
