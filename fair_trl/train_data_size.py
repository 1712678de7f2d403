"""Refuse a train dataset too small for one generation batch, which TRL would "train" for zero steps.

TRL's sampler hands out prompts in chunks of ``generation_batch_size / num_generations`` (the global
generation batch: ``per_device_train_batch_size x steps_per_generation x processes`` completions) and drops
an incomplete chunk, so a dataset with fewer rows yields nothing: the run ends at ``global_step = 0`` without
a word. A dataset without a length (a stream) cannot be checked here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_train_size"]


def check_train_size(dataset: Any, args: Any, num_generations: int, num_processes: int) -> None:
    """Raise ValueError, naming the sizes, when `dataset` has fewer rows than one generation batch's prompts."""
    if dataset is None:
        return
    try:
        rows = len(dataset)
    except TypeError:  # an iterable dataset: no length to compare
        return
    prompts = args.generation_batch_size // num_generations
    if rows >= prompts and rows > 0:
        return
    what = "is empty" if rows == 0 else f"has {rows} rows"
    raise ValueError(
        f"train_dataset {what}: one generation batch takes {prompts} prompts (generation_batch_size "
        f"{args.generation_batch_size} completions / num_generations {num_generations}; per_device_train_batch_size "
        f"{args.per_device_train_batch_size}, steps_per_generation {args.steps_per_generation}, {num_processes} "
        f"process(es)), and TRL drops an incomplete batch, so no step would train. Give it at least {prompts} rows, "
        "or lower per_device_train_batch_size or steps_per_generation"
    )
