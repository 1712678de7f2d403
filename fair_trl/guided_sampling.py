"""FairGRPO-guided sampling (beyond the paper): draw the next prompts by FairGRPO's weights.

FairGRPO scales each prompt's advantages by ``1 / (T_domain * T_group)`` (`FairGRPOAdvantage.cell_weights`).
Guided sampling uses the same weights to choose which prompts are drawn: each generation batch's prompts
are drawn, with replacement, with probability proportional to the weight of the row's (domain, group),
from the running statistics of the batches scored so far. It knows only the rows' domain and demographic
columns and the rewards seen, never how a group will fare.

`GuidedSampling` holds the statistics (the FairGRPO estimator's, or under another estimator its own,
fed each step's rewards) and the weights each generation batch draws by; the trainer checkpoints it.
`fair_trl.sampling.GuidedRepeatSampler` does the draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fair_trl.advantages import FairGRPOAdvantage, get_spec

__all__ = ["GuidedSampling", "guided_sampling"]

Cell = tuple[str, str | None]


def guided_sampling(config: Any, estimator: Any) -> GuidedSampling | None:
    """The guided sampling `config` (a `FairGRPOConfig`) asks for: None when off.

    Under a FairGRPO estimator it reads that estimator's statistics; under another it keeps a FairGRPO
    estimator of its own, built from the same config fields, only for its statistics.
    """
    if not config.guided_sampling:
        return None
    if isinstance(estimator, FairGRPOAdvantage):
        return GuidedSampling(estimator, owns_stats=False)
    return GuidedSampling(get_spec("fair_grpo").factory(config), owns_stats=True)


class GuidedSampling:
    """The FairGRPO statistics guided sampling draws by, and the cell weights after each scored generation batch.

    `owns_stats`: `stats` is fed here (`observe`), not by the trainer's advantage estimator.

    Generation batch j draws by the weights after batches 0 .. j-2 were scored: when the trainer scores a
    batch, the loader has already asked for the next one's prompts (accelerate fetches one batch ahead), so
    with one optimizer micro-step per generation batch, batch j-1 is not scored yet when batch j is drawn.
    A fixed lag makes each draw a function of the run alone, not of when the loader asks, so a resumed run
    draws what the unbroken run did. A loader that asks further ahead (``dataloader_num_workers`` > 0)
    gets the newest weights there are, and a resumed run may then draw otherwise.
    """

    def __init__(self, stats: FairGRPOAdvantage, owns_stats: bool):
        self.stats = stats
        self.owns_stats = owns_stats
        self.scored = 0  # generation batches scored
        self.snapshots: dict[int, dict[Cell, float]] = {}  # batches scored -> cell weights then (the last two)

    def observe(self, rewards: torch.Tensor, num_generations: int, domains: list[str], groups: list[str | None]):
        """A training generation batch was scored; under a FairGRPO estimator it has already seen the rewards."""
        if self.owns_stats:
            self.stats(rewards, num_generations, domains, groups)
        self.scored += 1
        self.snapshots[self.scored] = self.stats.cell_weights()
        self.snapshots.pop(self.scored - 2, None)

    def weights_for(self, batch: int, cells: list[Cell]) -> np.ndarray | None:
        """Generation batch `batch`'s weight of each of `cells`; None before any statistics (draw TRL's order)."""
        snapshot = self.snapshots.get(batch - 1)
        if snapshot is None and batch - 1 > self.scored:  # asked further ahead than one batch
            snapshot = self.snapshots.get(self.scored)
        if not snapshot:
            # No statistics yet, or a batch a resumed run replays only to skip it (its draw is never trained on).
            return None
        if not self.stats.use_demographics:  # its statistics pool every prompt of a domain
            cells = [(domain, None) for domain, _ in cells]
        # Rows of unknown group are their domain's cell (domain, None), one pooled group: FairGRPO places
        # such a prompt in a latent group by its rollouts' rewards, which it has only once generated.
        weights = np.array([snapshot.get(cell, np.nan) for cell in cells], dtype=np.float64)
        seen = ~np.isnan(weights)
        if not seen.any():
            return None
        # A cell without statistics yet: FairGRPO's temperature of a group never seen is 0, a weight of
        # 1 / epsilon that would take every draw; the largest weight seen draws it readily until it has some.
        weights[~seen] = weights[seen].max()
        return weights

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "scored": self.scored,
            "snapshots": [
                [scored, [[domain, group, weight] for (domain, group), weight in weights.items()]]
                for scored, weights in self.snapshots.items()
            ],
            "stats": self.stats.state_dict() if self.owns_stats else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported GuidedSampling state version {state.get('version')!r}")
        self.scored = int(state["scored"])
        self.snapshots = {
            int(scored): {(str(domain), group): float(weight) for domain, group, weight in weights}
            for scored, weights in state["snapshots"]
        }
        if self.owns_stats and state.get("stats") is not None:
            self.stats.load_state_dict(state["stats"])
