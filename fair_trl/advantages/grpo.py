"""GRPO: TRL's own group normalisation, reproduced op for op.

A run with `GRPOAdvantage` is step-for-step identical to plain ``GRPOTrainer``, so GRPO and FairGRPO
differ in the advantage and nothing else. Registered as ``grpo`` (`fair_trl.advantages.REGISTRY`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from fair_trl.advantages.layout import as_prompt_rows, nanstd

__all__ = ["TRL_STD_EPS", "GRPOAdvantage", "grpo"]

# TRL adds this to the group std before dividing (grpo_trainer.py, sum_then_normalize).
TRL_STD_EPS = 1e-4


def grpo(
    rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group", eps: float = TRL_STD_EPS
) -> torch.Tensor:
    """GRPO advantages exactly as TRL 1.16 computes them (its ``"sum_then_normalize"`` aggregation).

    ``A = (r - mean_prompt) / (std + eps)`` with the std taken per prompt (``"group"``), over the whole
    batch (``"batch"``) or not at all (``"none"``). NaN rewards (completions no reward function could
    score) are left out of the means and stds and get advantage 0.
    """
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    grouped = as_prompt_rows(rewards, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations, dim=0)
    advantages = rewards - mean
    if scale_rewards == "group":
        std = (
            nanstd(grouped, dim=1).squeeze(1).repeat_interleave(num_generations, dim=0)
            if num_generations > 1
            else torch.zeros_like(rewards)
        )
        advantages = advantages / (std + eps)
    elif scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        advantages = advantages / (std + eps)
    # nanstd computes in float32 or wider: hand back the rewards' own dtype, as TRL's loss expects.
    return torch.nan_to_num(advantages, nan=0.0).to(rewards.dtype)


class GRPOAdvantage:
    """`grpo` as an estimator: stateless, needs no groups."""

    needs_groups: ClassVar[bool] = False
    metric_prefix: ClassVar[str] = "grpo"

    def __init__(self, scale_rewards: str = "group", eps: float = TRL_STD_EPS) -> None:
        if scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
        self.scale_rewards = scale_rewards
        self.eps = eps
        self.last_info: dict = {}

    def __call__(
        self,
        rewards: torch.Tensor,
        num_generations: int,
        domains: Sequence[str] | None = None,
        groups: Sequence[str | None] | None = None,
    ) -> torch.Tensor:
        return grpo(rewards, num_generations, self.scale_rewards, self.eps)
