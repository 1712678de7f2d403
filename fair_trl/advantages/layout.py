"""TRL's reward layout, shared by every estimator: ``P * G`` rewards, each prompt's ``G`` contiguous.

TRL repeats each prompt ``num_generations`` times in a row, so a flat per-completion tensor (or a
per-completion list of domains and groups) reshapes to one row per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["as_prompt_rows", "nanstd", "per_prompt"]


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
    values = list(values)
    if len(values) != num_prompts * num_generations:
        raise ValueError(
            f"{name} has {len(values)} entries but rewards has {num_prompts * num_generations} "
            f"({num_prompts} prompts x {num_generations} generations)"
        )
    per_prompt = values[::num_generations]
    if all(values[j::num_generations] == per_prompt for j in range(1, num_generations)):
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
