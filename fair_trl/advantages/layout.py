"""TRL's reward layout, shared by every estimator: ``P * G`` rewards, each prompt's ``G`` contiguous.

TRL repeats each prompt ``num_generations`` times in a row, so a flat per-completion tensor (or a
per-completion list of domains and groups) reshapes to one row per prompt. Also TRL's schedule:
an estimator runs once per generation batch, which is not one optimizer step in general.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["as_prompt_rows", "generation_batches", "nanstd", "per_prompt", "zero_signal"]


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased std ignoring NaNs, with the same ops (and rounding) as ``trl.trainer.utils.nanstd``."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(variance, float("nan")))
    std = torch.sqrt(variance * correction)
    return std if dim is not None else std.reshape(())


def as_prompt_rows(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """``(P, G)`` view of a flat ``P * G`` reward tensor; rejects any other layout."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (P * G completions), got shape {tuple(rewards.shape)}")
    if num_generations < 1 or rewards.numel() % num_generations:
        raise ValueError(f"rewards has {rewards.numel()} entries, not a multiple of num_generations={num_generations}")
    return rewards.view(-1, num_generations)


def per_prompt(values: Sequence[Any], num_generations: int, num_prompts: int, name: str) -> list[Any]:
    """One value per prompt from a per-completion sequence, insisting all G copies agree."""
    if not isinstance(values, list | tuple):
        values = list(values)
    if len(values) != num_prompts * num_generations:
        raise ValueError(
            f"{name} has {len(values)} entries but rewards has {num_prompts * num_generations} "
            f"({num_prompts} prompts x {num_generations} generations)"
        )
    first = values[::num_generations]
    per_prompt = list(first)
    if all(values[j::num_generations] == first for j in range(1, num_generations)):
        return per_prompt
    for q, value in enumerate(per_prompt):
        block = values[q * num_generations : (q + 1) * num_generations]
        if any(v != value for v in block):
            raise ValueError(
                f"{name} differ within prompt {q} (completions {q * num_generations}-"
                f"{(q + 1) * num_generations - 1}): {sorted(set(map(str, block)))}; each prompt's "
                "completions must share one value"
            )
    return per_prompt


def zero_signal(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Per prompt: True when its scored rollouts cannot be told apart (all equal, or fewer than two scored).

    Such a prompt has no within-prompt signal under any estimator here: its normalised scores are 0.
    NaN rewards (unscorable completions) are left out.
    """
    grouped = as_prompt_rows(rewards, num_generations)
    scored = ~torch.isnan(grouped)
    highest = torch.where(scored, grouped, torch.full_like(grouped, -math.inf)).amax(dim=1)
    lowest = torch.where(scored, grouped, torch.full_like(grouped, math.inf)).amin(dim=1)
    return (scored.sum(dim=1) < 2) | (highest == lowest)


def generation_batches(
    optimizer_steps: int, *, gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int
) -> int:
    """How many generation batches (estimator calls) `optimizer_steps` optimizer steps hold, exactly.

    TRL steps the optimizer every `gradient_accumulation_steps` micro-batches and generates every
    ``steps_per_generation * num_iterations`` micro-batches. A number of optimizer steps that is not a
    whole number of generation batches is refused, naming the nearest numbers that are.
    """
    micro_batches = optimizer_steps * gradient_accumulation_steps
    per_generation = steps_per_generation * num_iterations
    if micro_batches % per_generation == 0:
        return micro_batches // per_generation
    unit = per_generation // math.gcd(per_generation, gradient_accumulation_steps)
    below = optimizer_steps // unit * unit
    nearest = " or ".join(str(n) for n in (below, below + unit) if n >= 1)
    raise ValueError(
        f"{optimizer_steps} optimizer steps are not a whole number of generation batches: one generation batch is "
        f"steps_per_generation ({steps_per_generation}) x num_iterations ({num_iterations}) micro-batches and one "
        f"optimizer step is gradient_accumulation_steps ({gradient_accumulation_steps}); use a multiple of {unit} "
        f"(nearest: {nearest})"
    )
