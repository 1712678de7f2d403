"""The baselines the paper compares FairGRPO against (section 4.1, Table 2), as advantage estimators.

Registered as ``rloo``, ``reinforce_pp`` and ``group_dro`` (`fair_trl.advantages.REGISTRY`).

Same layout as every estimator (`fair_trl.advantages.layout`): ``rewards`` is 1-D, each prompt's G
completions contiguous, NaN for a completion no reward function could score (it gets advantage 0 and
is left out of every statistic). GRPO itself is `fair_trl.advantages.grpo`; Resampling is a sampler,
in `fair_trl.sampling`.

* RLOO (Ahmadian et al., 2024): each completion's baseline is the mean reward of the prompt's *other*
  completions, ``A_i = r_i - mean_{j != i} r_j``; no std scaling.
* REINFORCE++ (Hu, 2025): no per-prompt baseline; the rewards (with the KL penalty folded in, which is
  zero here as the paper trains with KL off) are normalised over the whole global batch,
  ``A = (r - mean_batch) / (std_batch + eps)``.
* Group DRO (Sagawa et al., 2019) on top of GRPO: online group weights by exponentiated gradient,
  ``log q_g += eta * loss_g`` with ``loss_g`` the group's mean negative reward in the batch, and each
  prompt's GRPO advantage weighted so the batch objective is ``sum_g q_g * (mean loss of group g)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from fair_trl.advantages.grpo import TRL_STD_EPS, grpo
from fair_trl.advantages.layout import as_prompt_rows, nanstd, per_prompt
from fair_trl.groups import UNKNOWN

__all__ = ["GroupDROAdvantage", "RLOOAdvantage", "ReinforcePPAdvantage", "reinforce_pp", "rloo"]


def rloo(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Leave-one-out advantages: ``(n r_i - sum_j r_j) / (n - 1)`` over the prompt's n scored completions."""
    grouped = as_prompt_rows(rewards, num_generations)
    valid = ~torch.isnan(grouped)
    n = valid.sum(dim=1, keepdim=True).to(rewards.dtype)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    advantages = (n * grouped - total) / (n - 1)
    # A prompt with fewer than two scored completions has no leave-one-out baseline.
    advantages = torch.where(valid & (n > 1), advantages, torch.zeros_like(advantages))
    return advantages.reshape(-1)


def reinforce_pp(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ advantages: rewards normalised by the mean and (unbiased) std of the global batch."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    valid = ~torch.isnan(rewards)
    if valid.sum() < 2:
        return torch.zeros_like(rewards)
    advantages = (rewards - torch.nanmean(rewards)) / (nanstd(rewards) + eps)
    return torch.nan_to_num(advantages, nan=0.0)


class RLOOAdvantage:
    """`rloo` as an estimator: stateless, needs no groups."""

    needs_groups: ClassVar[bool] = False
    metric_prefix: ClassVar[str] = "rloo"

    def __init__(self) -> None:
        self.last_info: dict[str, Any] = {}

    def __call__(self, rewards: torch.Tensor, num_generations: int, domains=None, groups=None) -> torch.Tensor:
        return rloo(rewards, num_generations)


class ReinforcePPAdvantage:
    """`reinforce_pp` as an estimator: stateless, needs no groups (the batch is its only baseline)."""

    needs_groups: ClassVar[bool] = False
    metric_prefix: ClassVar[str] = "reinforce_pp"

    def __init__(self) -> None:
        self.last_info: dict[str, Any] = {}

    def __call__(self, rewards: torch.Tensor, num_generations: int, domains=None, groups=None) -> torch.Tensor:
        as_prompt_rows(rewards, num_generations)  # the same layout check as every estimator
        return reinforce_pp(rewards)


class GroupDROAdvantage:
    """GRPO advantages reweighted by online Group DRO weights; stateful (the log-weights persist).

    Groups are (domain, demographic group) pairs; a prompt without demographics is in its domain's
    "unknown" group. A group first seen later starts at log-weight 0, where every group started.
    ``last_info["weight"]`` holds the current weight q of each group in the batch.
    """

    needs_groups: ClassVar[bool] = True
    metric_prefix: ClassVar[str] = "dro"

    def __init__(self, step_size: float = 0.01, scale_rewards: str = "group", eps: float = TRL_STD_EPS):
        if not step_size >= 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        self.step_size = step_size
        self.scale_rewards = scale_rewards
        self.eps = eps
        self.log_weights: dict[str, float] = {}
        self.step = 0
        self.last_info: dict[str, Any] = {}

    def __call__(
        self,
        rewards: torch.Tensor,
        num_generations: int,
        domains: Sequence[str],
        groups: Sequence[str | None],
    ) -> torch.Tensor:
        grouped = as_prompt_rows(rewards, num_generations)
        num_prompts = grouped.shape[0]
        keys = [
            f"{domain}/{group if group is not None else UNKNOWN}"
            for domain, group in zip(
                per_prompt(domains, num_generations, num_prompts, "domains"),
                per_prompt(groups, num_generations, num_prompts, "groups"),
                strict=True,
            )
        ]
        base = grpo(rewards, num_generations, self.scale_rewards, self.eps)
        prompt_means = torch.nanmean(grouped.double(), dim=1).cpu().numpy()

        # Exponentiated-gradient ascent on the groups' losses (mean negative reward), batch by batch.
        present = list(dict.fromkeys(keys))
        for key in present:
            means = [m for k, m in zip(keys, prompt_means, strict=True) if k == key and not math.isnan(m)]
            self.log_weights.setdefault(key, 0.0)
            if means:
                self.log_weights[key] += self.step_size * -float(np.mean(means))
        self.step += 1

        # q over the groups in this batch; a prompt's weight q_g * P / n_g makes the batch loss
        # sum_g q_g * (group g's mean loss), scaled so that uniform q over K equal groups gives 1.
        logits = np.array([self.log_weights[k] for k in present])
        q = np.exp(logits - logits.max())
        q /= q.sum()
        weight_of = dict(zip(present, q, strict=True))
        counts = {key: keys.count(key) for key in present}
        prompt_weight = torch.tensor(
            [weight_of[k] * num_prompts / counts[k] for k in keys], dtype=rewards.dtype, device=rewards.device
        )
        self.last_info = {"weight": {k: float(w) for k, w in weight_of.items()}}
        return base * prompt_weight.repeat_interleave(num_generations)

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "step": self.step, "log_weights": dict(self.log_weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported GroupDROAdvantage state version {state.get('version')!r}")
        self.step = int(state["step"])
        self.log_weights = {str(k): float(v) for k, v in state["log_weights"].items()}
