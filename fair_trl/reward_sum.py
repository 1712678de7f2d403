"""The rewards the advantages are computed from: TRL's per-function rewards, summed as TRL sums them.

A completion with an infinite reward from any reward function is unscorable (NaN), whatever the others
returned: it would otherwise zero the whole batch's advantages and the running statistics of its domain
for good, and summing the other functions alone would score it on part of its reward.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from fair_trl.advantages import nanstd

__all__ = ["RewardSum"]

logger = logging.getLogger(__name__)


class RewardSum:
    """Weighted sums of a batch's per-function rewards (rows: completions, columns: `names`), NaN if unscorable.

    `metrics`: one mode's metric lists as TRL keeps them (``trainer._metrics[mode]``, a defaultdict of lists).
    """

    def __init__(self, names: Sequence[str], weights: torch.Tensor):
        self.names = names
        self.weights = weights
        self._warned: set[str] = set()

    def __call__(self, per_func: torch.Tensor, metrics: Mapping[str, list[float]]) -> torch.Tensor:
        """The same weighted sum TRL's "sum_then_normalize" path forms, NaN for unscorable rows.

        Each unscorable completion is counted in ``fair/nonfinite_rewards`` (appended to `metrics`) and
        warned about once per reward function.
        """
        infinite = torch.isinf(per_func)
        for i in torch.nonzero(infinite.any(dim=0)).flatten().tolist():
            name = self.names[i]
            if name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    "Reward function %r returned inf for some completions; they are treated as unscorable "
                    "(advantage 0) whatever the other reward functions returned. Further ones are only counted in "
                    "fair/nonfinite_rewards.",
                    name,
                )
        metrics["fair/nonfinite_rewards"].append(float(infinite.any(dim=1).sum()))
        return self.scorable(per_func)

    def scorable(self, per_func: torch.Tensor) -> torch.Tensor:
        per_func = per_func.masked_fill(torch.isinf(per_func).any(dim=1, keepdim=True), torch.nan)
        unscorable = torch.isnan(per_func).all(dim=1)
        rewards = (per_func * self.weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        return rewards

    def fix_logged(self, per_func: torch.Tensor, metrics: Mapping[str, list[float]]) -> None:
        """Replace the reward figures TRL just logged for this batch when an infinite reward made them inf or NaN.

        ``reward`` and ``reward_std`` then leave out the unscorable completions, as training does; each
        ``rewards/<function>/*`` leaves out that function's infinite values.
        """
        if not torch.isinf(per_func).any():
            return
        finite = per_func.masked_fill(torch.isinf(per_func), torch.nan)
        for i, name in enumerate(self.names):
            metrics[f"rewards/{name}/mean"][-1] = torch.nanmean(finite[:, i]).item()
            metrics[f"rewards/{name}/std"][-1] = nanstd(finite[:, i]).item()
        rewards = self.scorable(per_func)
        metrics["reward"][-1] = torch.nanmean(rewards).item()
        metrics["reward_std"][-1] = nanstd(rewards).item()
