"""FairGRPO (paper section 3): eq. 1-2 and the batch renormalisation, with latent groups for prompts
whose demographics are unknown; ``use_demographics=False`` is FairGRPO-ND. Registered as ``fair_grpo`` and
``fair_grpo_nd`` (`fair_trl.advantages.REGISTRY`).

Plain numpy on the CPU: the estimator sees one float per completion, so it costs next to nothing
beside a training step. Nothing here imports the trainer.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fair_trl.advantages.clustering import kmeans_elbow, rollout_features
from fair_trl.advantages.layout import as_prompt_rows, per_prompt
from fair_trl.groups import UNKNOWN

__all__ = ["FairGRPOAdvantage", "GroupStats", "temperature"]


@dataclass
class GroupStats:
    """Running sums for one domain or one (domain, group): enough for eq. 1 without keeping history."""

    prompts: int = 0
    reward_sum: float = 0.0
    reward_count: int = 0

    def add(self, reward_sum: float, reward_count: int) -> None:
        self.prompts += 1
        self.reward_sum += reward_sum
        self.reward_count += reward_count

    def remove(self, reward_sum: float, reward_count: int) -> None:
        self.prompts -= 1
        self.reward_sum -= reward_sum
        self.reward_count -= reward_count

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.reward_count if self.reward_count else 0.0


def temperature(num_prompts: float, mean_reward: float, reward_floor: float = 0.0) -> float:
    """Eq. 1: ``T = sqrt(N) * mean reward``.

    The paper's rewards lie in [0, 1]; a negative mean (possible with penalty rewards) is clipped at 0
    so that two negative temperatures cannot multiply into a large positive one. ``reward_floor`` (an
    optional variant, 0 in the paper) raises that clip: a group the model almost always fails then gets
    at most ``1 / floor`` times the weight of a group at mean reward 1, instead of up to ``1 / epsilon``.
    """
    return math.sqrt(num_prompts) * max(mean_reward, reward_floor, 0.0)


class FairGRPOAdvantage:
    """FairGRPO advantages (paper section 3), stateful across calls.

    For prompt q with rollout rewards r_i, in domain g and demographic group gamma:

    (i)   s_i = (r_i - mean(r)) / (std(r) + norm_epsilon)                  within-prompt normalisation
    (ii)  gamma = the prompt's group, or for unlabeled prompts its k-means cluster of rollout-reward
          vectors within the domain (elbow-chosen k <= max_clusters)
    (iii) T_g = sqrt(N_g) * rbar_g,  T_gamma = sqrt(N_gamma) * rbar_gamma     eq. 1
          s_i' = s_i / max(T_g * T_gamma, epsilon)                          eq. 2
          A_i = s_i' / std(all s' in the batch)                              renormalisation

    N counts prompts and rbar is the mean of all their rollout rewards, both cumulative over the run
    (the current batch added before scaling) and kept as running sums. An unlabeled prompt's N and
    rbar are its cluster's: the cluster's share of the domain's bounded pool of recent unlabeled
    reward vectors times the number of unlabeled prompts the domain has had (the size the cluster
    would have over the whole history, which is what the authors cluster), and the mean reward of its
    centre. NaN rewards get advantage 0 and are left out of every statistic.

    Optional variants, all off by default (the paper's method); the demo's ablation tests them:

    - ``reward_floor``: rbar in eq. 1 is raised to at least this value (see `temperature`).
    - ``max_weight_ratio``: divisors are raised so that no prompt's weight 1 / (T_g * T_gamma) exceeds
      this many times the smallest weight in the batch.
    - ``stats_window``: N and rbar count only the prompts of the last ``stats_window`` calls (steps)
      instead of the whole run, so the temperatures follow the model's current performance.
    """

    needs_groups: ClassVar[bool] = True
    metric_prefix: ClassVar[str] = "fair"

    def __init__(
        self,
        use_demographics: bool = True,
        epsilon: float = 1e-6,
        norm_epsilon: float = 1e-6,
        max_clusters: int = 3,
        elbow_threshold: float = 0.1,
        cluster_pool_size: int = 1024,
        seed: int = 0,
        reward_floor: float = 0.0,
        max_weight_ratio: float | None = None,
        stats_window: int | None = None,
    ) -> None:
        if epsilon <= 0 or norm_epsilon < 0:
            raise ValueError(f"epsilon must be > 0 and norm_epsilon >= 0, got {epsilon}, {norm_epsilon}")
        if max_clusters < 1:
            raise ValueError(f"max_clusters must be >= 1, got {max_clusters}")
        if cluster_pool_size < 1:
            raise ValueError(f"cluster_pool_size must be >= 1, got {cluster_pool_size}")
        if not 0 <= reward_floor <= 1:
            raise ValueError(f"reward_floor must be in [0, 1], got {reward_floor}")
        if max_weight_ratio is not None and not max_weight_ratio >= 1:
            raise ValueError(f"max_weight_ratio must be >= 1 (or None), got {max_weight_ratio}")
        if stats_window is not None and stats_window < 1:
            raise ValueError(f"stats_window must be >= 1 (or None), got {stats_window}")
        self.use_demographics = use_demographics
        self.epsilon = epsilon
        self.norm_epsilon = norm_epsilon
        self.max_clusters = max_clusters
        self.elbow_threshold = elbow_threshold
        self.cluster_pool_size = cluster_pool_size
        self.seed = seed
        self.reward_floor = reward_floor
        self.max_weight_ratio = max_weight_ratio
        self.stats_window = stats_window
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.feature_dim: int | None = None
        self.domain_stats: dict[str, GroupStats] = {}
        self.group_stats: dict[str, dict[str, GroupStats]] = {}
        self.unlabeled_seen: dict[str, int] = {}
        self.pools: dict[str, np.ndarray] = {}
        # Per call, what it added to the statistics: (domain, group or None, reward sum, count) per
        # prompt; kept only with `stats_window`, to take the oldest call back out.
        self.history: deque[list[tuple[str, str | None, float, int]]] = deque()
        self.last_info: dict[str, Any] = {}

    # -- the estimator ------------------------------------------------------------------------

    def __call__(
        self,
        rewards: torch.Tensor,
        num_generations: int,
        domains: Sequence[str],
        groups: Sequence[str | None],
    ) -> torch.Tensor:
        grouped = as_prompt_rows(rewards, num_generations)
        r = grouped.detach().to("cpu", torch.float64).numpy().copy()
        # An infinite reward cannot be normalised or summed into the running statistics: it is
        # unscorable, like NaN (the trainer counts and reports such rewards before they get here).
        r[np.isinf(r)] = np.nan
        prompt_domains = per_prompt(domains, num_generations, len(r), "domains")
        prompt_groups = per_prompt(groups, num_generations, len(r), "groups")
        if not self.use_demographics:
            prompt_groups = [None] * len(r)
        if self.feature_dim is None:
            self.feature_dim = num_generations
        self.step += 1

        valid = ~np.isnan(r)
        n_valid = valid.sum(axis=1)
        reward_sums = np.where(valid, r, 0.0).sum(axis=1)
        scored = n_valid > 0

        s = self._normalise_within_prompt(r, valid, n_valid)
        self._accumulate(prompt_domains, prompt_groups, reward_sums, n_valid, scored)
        cluster_n, cluster_mean, n_clusters = self._discover_groups(r, prompt_domains, prompt_groups, scored)

        divisors = np.ones(len(r))  # unscored prompts keep 1: their scores are all 0 anyway
        for q in np.flatnonzero(scored):
            domain, group = prompt_domains[q], prompt_groups[q]
            stats = self.domain_stats[domain]
            t_domain = temperature(stats.prompts, stats.mean_reward, self.reward_floor)
            if group is None:
                t_group = temperature(cluster_n[q], cluster_mean[q], self.reward_floor)
            else:
                g = self.group_stats[domain][group]
                t_group = temperature(g.prompts, g.mean_reward, self.reward_floor)
            divisors[q] = max(t_domain * t_group, self.epsilon)
        if self.max_weight_ratio is not None and scored.any():
            divisors[scored] = np.maximum(divisors[scored], divisors[scored].max() / self.max_weight_ratio)

        scaled = s / divisors[:, None]
        batch_std = float(np.std(scaled[valid], ddof=1)) if valid.sum() > 1 else 0.0
        if batch_std > 0 and math.isfinite(batch_std):
            advantages = scaled / batch_std
        else:  # no prompt carries signal: every s is 0
            advantages = np.zeros_like(scaled)
            batch_std = 0.0
        advantages[~valid] = 0.0

        signal = scored & (np.abs(s).sum(axis=1) > 0)
        self._record_info(prompt_domains, prompt_groups, divisors, batch_std, scored, signal, n_clusters)
        return torch.from_numpy(advantages.reshape(-1)).to(dtype=rewards.dtype, device=rewards.device)

    def _normalise_within_prompt(self, r: np.ndarray, valid: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
        filled = np.where(valid, r, 0.0)
        mean = filled.sum(axis=1) / np.maximum(n_valid, 1)
        centred = np.where(valid, r - mean[:, None], 0.0)
        # Unbiased std as torch.std and TRL use; a prompt with < 2 scored rollouts has none, so s = 0.
        var = (centred**2).sum(axis=1) / np.maximum(n_valid - 1, 1)
        s = centred / (np.sqrt(var)[:, None] + self.norm_epsilon)
        # Equal rewards carry no signal; in float64, rounding in the mean would otherwise leave tiny
        # residuals that the batch-std rescaling blows up to unit size.
        spread = np.where(valid, r, -np.inf).max(axis=1) - np.where(valid, r, np.inf).min(axis=1)
        s[(n_valid < 2) | (spread == 0)] = 0.0
        return np.where(valid, s, 0.0)

    def _accumulate(
        self,
        domains: list[str],
        groups: list[str | None],
        reward_sums: np.ndarray,
        n_valid: np.ndarray,
        scored: np.ndarray,
    ) -> None:
        added = []
        for q in np.flatnonzero(scored):
            domain, group = domains[q], groups[q]
            total, count = float(reward_sums[q]), int(n_valid[q])
            self.domain_stats.setdefault(domain, GroupStats()).add(total, count)
            if group is None:
                self.unlabeled_seen[domain] = self.unlabeled_seen.get(domain, 0) + 1
            else:
                self.group_stats.setdefault(domain, {}).setdefault(group, GroupStats()).add(total, count)
            added.append((domain, group, total, count))
        if self.stats_window is None:
            return
        self.history.append(added)
        while len(self.history) > self.stats_window:
            self._forget(self.history.popleft())

    def _forget(self, added: list[tuple[str, str | None, float, int]]) -> None:
        """Take one old call's prompts back out of the windowed statistics."""
        for domain, group, total, count in added:
            stats = self.domain_stats[domain]
            stats.remove(total, count)
            if stats.prompts == 0:
                del self.domain_stats[domain]
            if group is None:
                self.unlabeled_seen[domain] -= 1
                if self.unlabeled_seen[domain] == 0:
                    del self.unlabeled_seen[domain]
            else:
                group_stats = self.group_stats[domain][group]
                group_stats.remove(total, count)
                if group_stats.prompts == 0:
                    del self.group_stats[domain][group]
                    if not self.group_stats[domain]:
                        del self.group_stats[domain]

    def _discover_groups(
        self, r: np.ndarray, domains: list[str], groups: list[str | None], scored: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Cluster each domain's unlabeled prompts; return per-prompt cluster (N, mean reward)."""
        cluster_n = np.zeros(len(r))
        cluster_mean = np.zeros(len(r))
        by_domain: dict[str, list[int]] = {}
        for q in np.flatnonzero(scored):
            if groups[q] is None:
                by_domain.setdefault(domains[q], []).append(int(q))
        n_clusters = 0
        assert self.feature_dim is not None
        for domain, members in by_domain.items():
            features = rollout_features(r[members], self.feature_dim)
            pool = self.pools.get(domain)
            pool = features if pool is None else np.concatenate([pool, features])
            pool = pool[-self.cluster_pool_size :]
            self.pools[domain] = pool
            centres, pool_labels = kmeans_elbow(
                pool,
                max_k=self.max_clusters,
                threshold=self.elbow_threshold,
                seed=_rng_seed(self.seed, self.step, domain),
            )
            share = np.bincount(pool_labels, minlength=len(centres)) / len(pool)
            labels = ((features[:, None, :] - centres[None]) ** 2).sum(-1).argmin(axis=1)
            cluster_n[members] = share[labels] * self.unlabeled_seen[domain]
            cluster_mean[members] = centres[labels].mean(axis=1)
            n_clusters += len(centres)
        return cluster_n, cluster_mean, n_clusters

    def _record_info(
        self,
        domains: list[str],
        groups: list[str | None],
        divisors: np.ndarray,
        batch_std: float,
        scored: np.ndarray,
        signal: np.ndarray,
        n_clusters: int,
    ) -> None:
        # The factor each prompt's normalised scores were multiplied by: A = s * weight.
        weight = 1.0 / (divisors * batch_std) if batch_std > 0 else np.zeros_like(divisors)
        per_domain: dict[str, list[float]] = {}
        per_group: dict[str, list[float]] = {}
        for q in np.flatnonzero(scored):
            per_domain.setdefault(domains[q], []).append(float(weight[q]))
        # Per group only prompts whose rewards differ: the weight of an all-equal prompt multiplies zeros.
        for q in np.flatnonzero(signal):
            per_group.setdefault(groups[q] or UNKNOWN, []).append(float(weight[q]))
        self.last_info = {
            "weight": {d: float(np.mean(w)) for d, w in per_domain.items()},
            "group_weight": {g: float(np.mean(w)) for g, w in per_group.items()},
            "batch_std": batch_std,
            "num_clusters": n_clusters,
        }

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the next call depends on, as JSON-serialisable built-in types."""
        return {
            "version": 1,
            "step": self.step,
            "feature_dim": self.feature_dim,
            "domain_stats": {d: asdict(s) for d, s in self.domain_stats.items()},
            "group_stats": {d: {g: asdict(s) for g, s in gs.items()} for d, gs in self.group_stats.items()},
            "unlabeled_seen": dict(self.unlabeled_seen),
            "pools": {d: pool.tolist() for d, pool in self.pools.items()},
            "history": [[list(entry) for entry in added] for added in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported FairGRPOAdvantage state version {state.get('version')!r}")
        self.step = int(state["step"])
        self.feature_dim = state["feature_dim"]
        self.domain_stats = {d: GroupStats(**s) for d, s in state["domain_stats"].items()}
        self.group_stats = {d: {g: GroupStats(**s) for g, s in gs.items()} for d, gs in state["group_stats"].items()}
        self.unlabeled_seen = {d: int(n) for d, n in state["unlabeled_seen"].items()}
        self.pools = {
            d: np.asarray(pool, dtype=np.float64).reshape(-1, self.feature_dim or 0)
            for d, pool in state["pools"].items()
        }
        self.history = deque(
            [(str(d), g, float(total), int(count)) for d, g, total, count in added]
            for added in state.get("history", [])
        )


def _rng_seed(seed: int, step: int, domain: str) -> list[int]:
    # Derived from state, not a global RNG, so every rank and a resumed run draw the same inits.
    return [seed, step, zlib.crc32(str(domain).encode())]
