"""FairGRPO (paper section 3): eq. 1-2 and the batch renormalisation, with latent groups for prompts
whose demographics are unknown; ``use_demographics=False`` is FairGRPO-ND. Registered as ``fair_grpo`` and
``fair_grpo_nd`` (`fair_trl.advantages.REGISTRY`).

Plain numpy on the CPU: the estimator sees one float per completion, so it costs next to nothing
beside a training step. A call works on the batch's prompts as rows of a (P, G) array and loops only
over the distinct domains and groups of the batch. Nothing here imports the trainer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fair_trl.advantages.clustering import fit_latent_groups, nearest_centre, rollout_features
from fair_trl.advantages.layout import as_prompt_rows, per_prompt
from fair_trl.groups import UNKNOWN

__all__ = ["FairGRPOAdvantage", "GroupStats", "temperature"]

# One call's contribution to the statistics, per (domain, group or None): prompts, reward sum, reward count.
Entry = tuple[str, str | None, int, float, int]


@dataclass
class GroupStats:
    """Running sums for one domain or one (domain, group): enough for eq. 1 without keeping history."""

    prompts: int = 0
    reward_sum: float = 0.0
    reward_count: int = 0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.reward_count if self.reward_count else 0.0


def temperature(num_prompts: Any, mean_reward: Any, reward_floor: float = 0.0, reward_min: float = 0.0) -> Any:
    """Eq. 1: ``T = sqrt(N) * (rbar - reward_min)``, elementwise on arrays.

    The paper's rewards lie in [0, 1] and T grows with the mean reward from 0. ``reward_min`` is the
    lowest reward the reward functions can give (0 in the paper), so any reward range measures the mean
    from the same place and T is never negative: the estimator refuses a reward below it.
    ``reward_floor`` (an optional variant, 0 in the paper) raises ``rbar - reward_min`` to at least
    this value: a group the model almost always fails then gets at most ``1 / floor`` times the weight
    of a group at mean 1, instead of up to ``1 / epsilon``.
    """
    return np.sqrt(num_prompts) * np.maximum(np.asarray(mean_reward) - reward_min, reward_floor)


class FairGRPOAdvantage:
    """FairGRPO advantages (paper section 3), stateful across calls.

    For prompt q with rollout rewards r_i, in domain g and demographic group gamma:

    (i)   s_i = (r_i - mean(r)) / (std(r) + norm_epsilon)                  within-prompt normalisation
    (ii)  gamma = the prompt's group, or for unlabeled prompts its k-means cluster of rollout-reward
          vectors within the domain (elbow-chosen k <= max_clusters, `clustering`)
    (iii) T_g = sqrt(N_g) * rbar_g,  T_gamma = sqrt(N_gamma) * rbar_gamma     eq. 1 (`temperature`)
          s_i' = s_i / max(T_g * T_gamma, epsilon)                          eq. 2
          A_i = s_i' / std(all s' in the batch)                              renormalisation

    N counts prompts and rbar is the mean of all their rollout rewards, both cumulative over the run
    (the current batch added before scaling) and kept as running sums. An unlabeled prompt's N and
    rbar are its cluster's: the cluster's share of the domain's bounded pool of recent unlabeled
    reward vectors times the number of unlabeled prompts the domain has had (the size the cluster
    would have over the whole history, which is what the authors cluster), and the mean reward of its
    centre. NaN rewards get advantage 0 and are left out of every statistic.

    ``reward_min``: the lowest reward possible; temperatures measure the mean reward from it, and a reward
    below it is refused. None: the lowest reward seen so far, and 0 until a reward below 0 arrives (so
    rewards in [0, 1] are measured from 0 as in the paper, and a reward model's unbounded scores from the
    lowest one seen); it only ever falls, and is checkpointed.

    Optional variants, all off by default (the paper's method); the demo's ablation tests them:

    - ``reward_floor``: rbar in eq. 1 is raised to at least this value (see `temperature`).
    - ``max_weight_ratio``: divisors are raised so that no prompt's weight 1 / (T_g * T_gamma) exceeds
      this many times the smallest weight in the batch.
    - ``stats_window``: N and rbar count only the prompts of the last ``stats_window`` calls (steps)
      instead of the whole run; the pools of unlabeled vectors are bounded as always.

    ``seed`` seeds only the k-means of graded rewards; 0/1 rewards are clustered exactly.
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
        reward_min: float | None = 0.0,
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
        if reward_min is not None and not np.isfinite(reward_min):
            raise ValueError(f"reward_min must be a finite number or None, got {reward_min}")
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
        self.reward_min = reward_min
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.feature_dim: int | None = None
        self.domain_stats: dict[str, GroupStats] = {}
        self.group_stats: dict[str, dict[str, GroupStats]] = {}  # domain -> group -> stats
        self.unlabeled_seen: dict[str, int] = {}  # domain -> unlabeled prompts counted
        self.pools: dict[str, np.ndarray] = {}  # domain -> its recent unlabeled reward vectors, oldest first
        self.history: deque[list[Entry]] = deque()  # with stats_window: each call's entries, to take out later
        self.lowest_reward = 0.0  # with reward_min None: the lowest reward seen (0 until one falls below 0)
        self.last_info: dict[str, Any] = {}

    # -- the estimator ------------------------------------------------------------------------

    def __call__(
        self,
        rewards: torch.Tensor,
        num_generations: int,
        domains: Sequence[str],
        groups: Sequence[str | None],
    ) -> torch.Tensor:
        rows = as_prompt_rows(rewards, num_generations).detach().cpu()
        if rows.dtype not in (torch.float32, torch.float64):
            rows = rows.to(torch.float64)
        r = rows.numpy().astype(np.float64)  # a copy, exact from either
        n_prompts = len(r)
        prompt_domains = per_prompt(domains, num_generations, n_prompts, "domains")
        prompt_groups = per_prompt(groups, num_generations, n_prompts, "groups")
        if not self.use_demographics:
            prompt_groups = [None] * n_prompts
        # An infinite reward cannot be normalised or summed: it is unscorable, like NaN.
        valid = np.isfinite(r)
        r[~valid] = np.nan
        if self.reward_min is None:
            if valid.any():
                self.lowest_reward = min(self.lowest_reward, float(r[valid].min()))
        else:
            self._check_reward_min(r, valid, prompt_domains)
        if self.feature_dim is None:
            self.feature_dim = num_generations
        self.step += 1
        scored = valid.any(axis=1)

        s = normalise_within_prompt(r, valid, self.norm_epsilon)  # (i)

        # Eq. 1's statistics, with this batch's scored prompts added first.
        key_of, keys = _index(zip(prompt_domains, prompt_groups, strict=True))
        domain_of_key, domain_names = _index(d for d, _ in keys)
        domain_of = domain_of_key[key_of]
        self._add_call(_entries(keys, key_of[scored], r[scored]))

        # (ii) each prompt's group temperature: its labeled group's, or its latent group's.
        labeled = [self.group_stats.get(d, {}).get(g, GroupStats()) for d, g in keys]  # unlabeled: replaced below
        t_group = self._temperature(labeled)[key_of]
        unlabeled = np.array([g is None for _, g in keys], dtype=bool)[key_of] & scored
        n_clusters = 0
        for d in np.unique(domain_of[unlabeled]).tolist():
            prompts = np.flatnonzero(unlabeled & (domain_of == d))
            cluster_n, cluster_mean, k = self._latent_groups(domain_names[d], r[prompts])
            t_group[prompts] = temperature(cluster_n, cluster_mean, self.reward_floor, self.measured_from)
            n_clusters += k

        # (iii) eq. 2, then the batch renormalisation.
        t_domain = self._temperature([self.domain_stats.get(d, GroupStats()) for d in domain_names])[domain_of]
        divisors = np.maximum(t_domain * t_group, self.epsilon)
        if self.max_weight_ratio is not None and scored.any():
            divisors = np.maximum(divisors, divisors[scored].max() / self.max_weight_ratio)
        divisors[~scored] = 1.0  # their scores are all 0
        scaled = s / divisors[:, None]
        batch_std = float(np.std(scaled[valid], ddof=1)) if valid.sum() > 1 else 0.0
        if batch_std > 0 and np.isfinite(batch_std):
            advantages = np.where(valid, scaled / batch_std, 0.0)
        else:  # no prompt carries signal: every s is 0
            advantages, batch_std = np.zeros_like(scaled), 0.0

        # Per group, a key is its name across domains, "unknown" for unlabeled prompts (and an empty name).
        group_of_key, group_names = _index(g or UNKNOWN for _, g in keys)
        groups_of = (domain_of, domain_names), (group_of_key[key_of], group_names)
        self._record_info(groups_of, divisors, batch_std, scored, s.any(axis=1), n_clusters)
        flat = advantages.reshape(-1)
        if rewards.dtype == torch.float32:  # numpy's cast rounds as torch's does, at a fraction of its cost
            flat = flat.astype(np.float32)
        dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.float32
        return torch.from_numpy(flat).to(dtype=dtype, device=rewards.device)

    def cell_weights(self) -> dict[tuple[str, str | None], float]:
        """Eq. 2's weight ``1 / max(T_domain * T_group, epsilon)`` of each (domain, group) with statistics.

        What FairGRPO would scale a prompt of that cell by (before the batch renormalisation), from the
        running statistics; guided sampling draws prompts by it. A domain's prompts of unknown group
        (every prompt, without demographics) are the cell (domain, None) and count as one pooled group:
        their latent groups are clusters of rollout rewards, which a prompt has only once it is generated.
        With `max_weight_ratio`, no weight exceeds that many times the smallest one returned.
        """
        cells: list[tuple[str, str | None]] = []
        domain_stats: list[GroupStats] = []
        group_stats: list[GroupStats] = []
        for domain, stats in self.domain_stats.items():
            groups = self.group_stats.get(domain, {})
            for group, g_stats in groups.items():
                cells.append((domain, group))
                domain_stats.append(stats)
                group_stats.append(g_stats)
            unlabeled = self.unlabeled_seen.get(domain, 0)
            if unlabeled:
                # The domain's sums less its labeled groups' are its unlabeled prompts' sums.
                pooled = GroupStats(
                    unlabeled,
                    stats.reward_sum - sum(g.reward_sum for g in groups.values()),
                    stats.reward_count - sum(g.reward_count for g in groups.values()),
                )
                cells.append((domain, None))
                domain_stats.append(stats)
                group_stats.append(pooled)
        if not cells:
            return {}
        weights = 1.0 / np.maximum(self._temperature(domain_stats) * self._temperature(group_stats), self.epsilon)
        if self.max_weight_ratio is not None:
            weights = np.minimum(weights, weights.min() * self.max_weight_ratio)
        return dict(zip(cells, weights.tolist(), strict=True))

    @property
    def measured_from(self) -> float:
        """The reward temperatures measure the mean from: `reward_min`, or with None the lowest reward seen."""
        return self.lowest_reward if self.reward_min is None else self.reward_min

    def _check_reward_min(self, r: np.ndarray, valid: np.ndarray, prompt_domains: list[str]) -> None:
        low = valid & (r < self.reward_min)
        if low.any():
            q, i = np.argwhere(low)[0]
            raise ValueError(
                f"reward {r[q, i]:g} (prompt {q}, domain {prompt_domains[q]!r}) is below reward_min="
                f"{self.reward_min:g} (FairGRPOConfig.fair_reward_min), the lowest reward FairGRPO's temperatures "
                "measure from (they must not be negative). Set it to the lowest reward your reward functions can "
                "give, or to None to measure from the lowest reward seen; advantage_estimator='grpo' gives TRL's "
                "GRPO advantages, which take any reward"
            )

    def _temperature(self, stats: list[GroupStats]) -> np.ndarray:
        """Eq. 1 for each of `stats`."""
        prompts = np.array([x.prompts for x in stats], dtype=np.float64)
        mean = np.array([x.mean_reward for x in stats], dtype=np.float64)
        return temperature(prompts, mean, self.reward_floor, self.measured_from)

    def _add_call(self, entries: list[Entry]) -> None:
        """Add one call's prompts to the statistics and, with `stats_window`, take the oldest call's out."""
        self._add(entries, +1)
        if self.stats_window is None:
            return
        self.history.append(entries)
        while len(self.history) > self.stats_window:
            self._add(self.history.popleft(), -1)

    def _add(self, entries: Iterable[Entry], sign: int) -> None:
        for domain, group, prompts, reward_sum, reward_count in entries:
            if group is None:
                self.unlabeled_seen[domain] = self.unlabeled_seen.get(domain, 0) + sign * prompts
                if not self.unlabeled_seen[domain]:
                    del self.unlabeled_seen[domain]
            else:
                _add_to(self.group_stats.setdefault(domain, {}), group, prompts, reward_sum, reward_count, sign)
                if not self.group_stats[domain]:
                    del self.group_stats[domain]
            _add_to(self.domain_stats, domain, prompts, reward_sum, reward_count, sign)

    def _latent_groups(self, domain: str, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(ii) for a domain's unlabeled prompts of this call: each one's cluster's N and mean reward, and k.

        The prompts join the domain's pool (sorted, so the pool does not depend on their order in the
        batch; the oldest leave once it is full), the pool is clustered, and each prompt takes its
        nearest centre, also one pushed out of the pool by its own batch.
        """
        assert self.feature_dim is not None
        features = rollout_features(rewards, self.feature_dim)
        joining = features[np.lexsort(features.T[::-1])]
        pool = np.concatenate([self.pools.get(domain, np.zeros((0, self.feature_dim))), joining])
        pool = self.pools[domain] = pool[-self.cluster_pool_size :]
        centres, members = fit_latent_groups(pool, self.max_clusters, self.elbow_threshold, self.seed)
        share = members / len(pool)
        cluster = nearest_centre(features, centres)
        return share[cluster] * self.unlabeled_seen[domain], centres.mean(axis=1)[cluster], len(centres)

    def _record_info(
        self,
        groups_of: tuple[tuple[np.ndarray, list[str]], tuple[np.ndarray, list[str]]],
        divisors: np.ndarray,
        batch_std: float,
        scored: np.ndarray,
        signal: np.ndarray,
        n_clusters: int,
    ) -> None:
        # The factor each prompt's normalised scores were multiplied by: A = s * weight; per domain over
        # its scored prompts, per group only over prompts whose rewards differ (the weight of an
        # all-equal prompt multiplies zeros).
        weight = 1.0 / (divisors * batch_std) if batch_std > 0 else np.zeros_like(divisors)
        (domain_of, domain_names), (group_of, group_names) = groups_of
        self.last_info = {
            "weight": _means_by_key(domain_of[scored], domain_names, weight[scored]),
            "group_weight": _means_by_key(group_of[signal], group_names, weight[signal]),
            "batch_std": batch_std,
            "num_clusters": n_clusters,
        }

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the next call depends on, as JSON-serialisable built-in types."""
        return {
            "version": 2,
            "step": self.step,
            "feature_dim": self.feature_dim,
            "domain_stats": {d: asdict(s) for d, s in self.domain_stats.items()},
            "group_stats": {d: {g: asdict(s) for g, s in gs.items()} for d, gs in self.group_stats.items()},
            "unlabeled_seen": dict(self.unlabeled_seen),
            "pools": {d: pool.tolist() for d, pool in self.pools.items()},
            "history": [[list(entry) for entry in entries] for entries in self.history],
            "lowest_reward": self.lowest_reward,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        if version not in (1, 2):
            raise ValueError(f"unsupported FairGRPOAdvantage state version {version!r}")
        self.reset()
        self.step = int(state["step"])
        self.feature_dim = state["feature_dim"]
        self.domain_stats = {d: GroupStats(**s) for d, s in state["domain_stats"].items()}
        self.group_stats = {d: {g: GroupStats(**s) for g, s in gs.items()} for d, gs in state["group_stats"].items()}
        self.unlabeled_seen = {d: int(n) for d, n in state["unlabeled_seen"].items()}
        # States from before it was kept come from runs that refused rewards below 0.
        self.lowest_reward = float(state.get("lowest_reward", 0.0))
        dim = self.feature_dim or 0
        # As saved, even if longer than this estimator's pool size: the next call cuts it.
        self.pools = {d: np.asarray(rows, dtype=np.float64).reshape(-1, dim) for d, rows in state["pools"].items()}
        for entries in state.get("history", []):
            if version == 1:  # one entry per prompt: (domain, group, reward sum, reward count)
                entries = [(d, g, 1, total, count) for d, g, total, count in entries]
            self.history.append([(str(d), g, int(n), float(total), int(c)) for d, g, n, total, c in entries])


def normalise_within_prompt(r: np.ndarray, valid: np.ndarray, norm_epsilon: float) -> np.ndarray:
    """(i): s = (r - mean(r)) / (std(r) + norm_epsilon) over each prompt's scored rollouts (a row).

    Unbiased std, as torch.std and TRL use. A prompt whose scored rollouts all score the same, or
    with fewer than two scored, carries no signal: s = 0 (float64 rounding in its mean would otherwise
    leave residuals that the batch renormalisation blows up). Unscored rollouts get 0.
    """
    n = valid.sum(axis=1, keepdims=True)
    mean = np.where(valid, r, 0.0).sum(axis=1, keepdims=True) / np.maximum(n, 1)
    centred = np.where(valid, r - mean, 0.0)
    std = np.sqrt((centred**2).sum(axis=1, keepdims=True) / np.maximum(n - 1, 1))
    s = centred / (std + norm_epsilon)
    spread = np.where(valid, r, -np.inf).max(axis=1) - np.where(valid, r, np.inf).min(axis=1)
    s[(n[:, 0] < 2) | (spread == 0)] = 0.0
    return s


def _index(values: Iterable[Hashable]) -> tuple[np.ndarray, list[Any]]:
    """(the index of each value among the distinct values, the distinct values in order of first appearance)."""
    values = list(values)
    distinct = list(dict.fromkeys(values))
    position = {value: i for i, value in enumerate(distinct)}
    return np.fromiter(map(position.__getitem__, values), dtype=np.intp, count=len(values)), distinct


def _entries(keys: list[tuple[str, str | None]], key_of: np.ndarray, r: np.ndarray) -> list[Entry]:
    """Per (domain, group) key of the scored prompts: how many, and the sum and count of their scored rewards."""
    valid = ~np.isnan(r)
    prompts = np.bincount(key_of, minlength=len(keys))
    sums = np.bincount(key_of, weights=np.where(valid, r, 0.0).sum(axis=1), minlength=len(keys))
    counts = np.bincount(key_of, weights=valid.sum(axis=1), minlength=len(keys))
    return [
        (domain, group, int(prompts[k]), float(sums[k]), int(counts[k]))
        for k, (domain, group) in enumerate(keys)
        if prompts[k]
    ]


def _add_to(stats: dict[str, GroupStats], key: str, prompts: int, reward_sum: float, count: int, sign: int) -> None:
    entry = stats.setdefault(key, GroupStats())
    entry.prompts += sign * prompts
    entry.reward_sum += sign * reward_sum
    entry.reward_count += sign * count
    if not entry.prompts:  # its last prompt left the window: gone, with no rounding residue kept
        del stats[key]


def _means_by_key(ids: np.ndarray, names: list[Any], values: np.ndarray) -> dict[Any, float]:
    """{name: mean of its values} for the names present (``ids``: an index into ``names`` per value)."""
    counts = np.bincount(ids, minlength=len(names))
    totals = np.bincount(ids, weights=values, minlength=len(names))
    return {name: float(totals[k] / counts[k]) for k, name in enumerate(names) if counts[k]}
