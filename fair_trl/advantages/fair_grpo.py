"""FairGRPO (paper section 3): eq. 1-2 and the batch renormalisation, with latent groups for prompts
whose demographics are unknown; ``use_demographics=False`` is FairGRPO-ND. Registered as ``fair_grpo`` and
``fair_grpo_nd`` (`fair_trl.advantages.REGISTRY`).

Plain numpy on the CPU: the estimator sees one float per completion, so it costs next to nothing
beside a training step. Domains and groups get integer ids, so every statistic is an array indexed by
them and a step is a fixed number of array operations, not a loop over prompts. Nothing here imports
the trainer.
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from fair_trl.advantages.clustering import fit_pools, pairwise_sum, rollout_features_by_block, stream_length
from fair_trl.advantages.layout import as_prompt_rows, per_prompt
from fair_trl.advantages.reward_pools import (
    BinaryRewardPool,
    RewardPool,
    every_sorted_binary_row,
    sorted_binary_ones,
)
from fair_trl.advantages.streams import Drawn, as_uniforms, pcg64_draws
from fair_trl.groups import UNKNOWN

__all__ = ["FairGRPOAdvantage", "GroupStats", "temperature"]

_DRAWN_STEPS = 64


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


def temperature(num_prompts: Any, mean_reward: Any, reward_floor: float = 0.0) -> Any:
    """Eq. 1: ``T = sqrt(N) * mean reward``, elementwise on arrays.

    The paper's rewards lie in [0, 1]; a negative mean (possible with penalty rewards) is clipped at 0
    so that two negative temperatures cannot multiply into a large positive one. ``reward_floor`` (an
    optional variant, 0 in the paper) raises that clip: a group the model almost always fails then gets
    at most ``1 / floor`` times the weight of a group at mean reward 1, instead of up to ``1 / epsilon``.
    """
    return np.sqrt(num_prompts) * np.maximum(mean_reward, max(reward_floor, 0.0))


class _Sums:
    """Eq. 1's running sums for keys with integer ids: prompts seen, and the sum and count of their rewards."""

    def __init__(self) -> None:
        self.prompts = np.zeros(0, dtype=np.int64)
        self.reward_sum = np.zeros(0)
        self.reward_count = np.zeros(0, dtype=np.int64)

    def grow(self, size: int) -> None:
        extra = size - len(self.prompts)
        if extra > 0:
            self.prompts = np.concatenate([self.prompts, np.zeros(extra, dtype=np.int64)])
            self.reward_sum = np.concatenate([self.reward_sum, np.zeros(extra)])
            self.reward_count = np.concatenate([self.reward_count, np.zeros(extra, dtype=np.int64)])

    def add(self, ids: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
        # np.add.at adds prompt by prompt in batch order, so the sums round as a loop over prompts would.
        np.add.at(self.reward_sum, ids, sums)
        self.prompts += np.bincount(ids, minlength=len(self.prompts))
        self.reward_count += np.bincount(ids, weights=counts, minlength=len(self.prompts)).astype(np.int64)

    def remove(self, ids: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
        np.subtract.at(self.reward_sum, ids, sums)
        self.prompts -= np.bincount(ids, minlength=len(self.prompts))
        self.reward_count -= np.bincount(ids, weights=counts, minlength=len(self.prompts)).astype(np.int64)
        # A key whose last prompt left starts again from exact zeros, not from rounding residue.
        self.reward_sum[self.prompts == 0] = 0.0

    def mean_reward(self) -> np.ndarray:
        out = np.zeros(len(self.reward_sum))
        np.divide(self.reward_sum, self.reward_count, out=out, where=self.reward_count > 0)
        return out

    def stats(self, i: int) -> GroupStats:
        return GroupStats(int(self.prompts[i]), float(self.reward_sum[i]), int(self.reward_count[i]))

    def set(self, i: int, stats: dict[str, Any]) -> None:
        self.prompts[i] = int(stats["prompts"])
        self.reward_sum[i] = float(stats["reward_sum"])
        self.reward_count[i] = int(stats["reward_count"])


class _Call(NamedTuple):
    """What one call added to the statistics, kept with `stats_window` to take it back out later."""

    domains: np.ndarray  # domain id per scored prompt, in batch order
    groups: np.ndarray  # group id per scored prompt, -1 for an unlabeled one
    reward_sums: np.ndarray
    reward_counts: np.ndarray


class _Codes:
    """Hashable values <-> dense integer ids, in order of first appearance."""

    def __init__(self) -> None:
        self.ids: dict[Hashable, int] = {}
        self.values: list[Hashable] = []

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: Hashable) -> int:
        if value not in self.ids:
            self.ids[value] = len(self.values)
            self.values.append(value)
        return self.ids[value]

    def encode(self, values: Sequence[Hashable]) -> np.ndarray:
        try:
            return np.fromiter(map(self.ids.__getitem__, values), dtype=np.intp, count=len(values))
        except KeyError:
            for value in values:
                self.add(value)
            return np.fromiter(map(self.ids.__getitem__, values), dtype=np.intp, count=len(values))


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

    The running statistics are arrays indexed by domain and (domain, group) ids; `domain_stats`,
    `group_stats`, `unlabeled_seen`, `pools` and `history` show them keyed by name.
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
        self._domains = _Codes()  # domain -> id
        self._names = _Codes()  # group name -> id; id 0 is None, "demographics unknown"
        self._names.add(None)
        self._groups = _Codes()  # (domain id, group name id) -> group id
        self._group_of_pair = np.full((0, 0), -1, dtype=np.intp)
        self._domain_sums = _Sums()
        self._group_sums = _Sums()
        self._unlabeled_seen = np.zeros(0, dtype=np.int64)
        self._pools: dict[int, RewardPool | BinaryRewardPool] = {}  # domain id -> its unlabeled reward vectors
        self._crc: dict[int, int] = {}
        self._drawn_block = -1
        self._drawn: dict[int, np.ndarray] = {}  # domain id -> its draws for the steps of _drawn_block
        self._calls: deque[_Call] = deque()
        self._info_keys = _Codes()  # last_info["group_weight"] keys: a group's name, "unknown" for None
        self._info_key_of_name = np.zeros(0, dtype=np.intp)
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
        if grouped.dtype not in (torch.float32, torch.float64):
            grouped = grouped.to(torch.float64)
        # One column per prompt (G x P): a prompt's sums over its rollouts are then a few whole-row
        # additions (`pairwise_sum`, in the order numpy sums each prompt's row) instead of P reductions.
        rows = (grouped.detach() if grouped.requires_grad else grouped).cpu().numpy()
        columns = np.array(rows.T, dtype=np.float64, order="C")  # a copy, exact from either
        r = columns.T
        prompt_domains = per_prompt(domains, num_generations, len(r), "domains")
        prompt_groups = per_prompt(groups, num_generations, len(r), "groups")
        if not self.use_demographics:
            prompt_groups = [None] * len(r)
        if self.feature_dim is None:
            self.feature_dim = num_generations
        self.step += 1

        # An infinite reward cannot be normalised or summed into the running statistics: it is
        # unscorable, like NaN (the trainer counts and reports such rewards before they get here).
        valid = np.isfinite(columns)
        everything = bool(valid.all())  # the common case: nothing to mask
        if everything:
            n_valid = np.full(len(r), num_generations)
            filled = columns
        else:
            columns[~valid] = np.nan
            r = columns.T
            n_valid = valid.sum(axis=0)
            filled = np.where(valid, columns, 0.0)
        reward_sums = pairwise_sum(filled)
        scored = np.arange(len(r)) if everything else np.nonzero(n_valid > 0)[0]
        take = slice(None) if everything else scored  # the scored prompts: a view where they are all of them
        domain_ids = self._domains.encode(prompt_domains)
        name_ids = self._names.encode(prompt_groups)
        self._grow()
        group_ids = self._group_ids(domain_ids, name_ids, scored, take)

        s = self._normalise_within_prompt(columns, None if everything else valid, n_valid, reward_sums)
        self._accumulate(domain_ids[take], group_ids[take], reward_sums[take], n_valid[take])
        unlabeled = scored[group_ids[take] < 0]
        prompts, cluster_n, cluster_mean, n_clusters = self._discover_groups(r, domain_ids, unlabeled)

        # Eq. 1 for every domain and group at once, then each scored prompt's divisor T_g * T_gamma
        # (eq. 2); unscored prompts keep 1: their scores are all 0 anyway.
        t_domain = temperature(self._domain_sums.prompts, self._domain_sums.mean_reward(), self.reward_floor)
        t_labeled = temperature(self._group_sums.prompts, self._group_sums.mean_reward(), self.reward_floor)
        # A labeled prompt's group temperature, then an unlabeled one's: its cluster's (step ii).
        t_group = t_labeled[np.maximum(group_ids, 0)] if len(t_labeled) else np.zeros(len(r))
        t_group[prompts] = temperature(cluster_n, cluster_mean, self.reward_floor)
        divisors = np.maximum(t_domain[domain_ids[take]] * t_group[take], self.epsilon)
        if self.max_weight_ratio is not None and divisors.size:
            divisors = np.maximum(divisors, divisors.max() / self.max_weight_ratio)
        if not everything:
            of_scored, divisors = divisors, np.ones(len(r))
            divisors[scored] = of_scored

        scaled = np.ascontiguousarray((s / divisors).T)  # eq. 2: s' = s / max(T_g * T_gamma, epsilon)
        # The renormalisation: every s' divided by the unbiased std of all scored s' in the batch (in
        # the order of the flat batch, as np.std sums them).
        scored_scaled = scaled.reshape(-1) if everything else scaled[valid.T]
        batch_std = _sample_std(scored_scaled) if scored_scaled.size > 1 else 0.0
        if batch_std > 0 and math.isfinite(batch_std):
            advantages = scaled / batch_std
        else:  # no prompt carries signal: every s is 0
            advantages = np.zeros_like(scaled)
            batch_std = 0.0
        if not everything:
            advantages[~valid.T] = 0.0

        signal = scored[s.any(axis=0)[take]]
        self._record_info(domain_ids, name_ids, divisors, batch_std, take, signal, n_clusters)
        flat = advantages.reshape(-1)
        if rewards.is_cpu and rewards.dtype == torch.float32:
            return torch.from_numpy(flat.astype(np.float32))  # the same rounding as torch's cast, without its dispatch
        return torch.from_numpy(flat).to(dtype=rewards.dtype, device=rewards.device)

    def _normalise_within_prompt(
        self, columns: np.ndarray, valid: np.ndarray | None, n_valid: np.ndarray, reward_sums: np.ndarray
    ) -> np.ndarray:
        """(i): s = (r - mean(r)) / (std(r) + norm_epsilon) over each prompt's scored rollouts (a column).

        ``valid``: which rewards are scored, None when all are.
        """
        everything = valid is None
        g = len(columns)  # with every reward scored, each prompt has G
        mean = reward_sums / (g if everything else np.maximum(n_valid, 1))
        centred = columns - mean if everything else np.where(valid, columns - mean, 0.0)
        # Unbiased std as torch.std and TRL use; a prompt with < 2 scored rollouts has none, so s = 0.
        var = pairwise_sum(centred * centred) / (max(g - 1, 1) if everything else np.maximum(n_valid - 1, 1))
        s = centred / (np.sqrt(var) + self.norm_epsilon)
        # Equal rewards carry no signal; in float64, rounding in the mean would otherwise leave tiny
        # residuals that the batch-std rescaling blows up to unit size.
        if everything:
            flat = columns.max(axis=0) == columns.min(axis=0)
            if g < 2:
                flat[:] = True
        else:
            spread = np.where(valid, columns, -np.inf).max(axis=0) - np.where(valid, columns, np.inf).min(axis=0)
            flat = (n_valid < 2) | (spread == 0)
        if flat.any():
            s[:, flat] = 0.0
        return s if everything else np.where(valid, s, 0.0)

    def _grow(self) -> None:
        n_domains, n_names = len(self._domains), len(self._names)
        self._domain_sums.grow(n_domains)
        if len(self._unlabeled_seen) < n_domains:
            self._unlabeled_seen = np.concatenate(
                [self._unlabeled_seen, np.zeros(n_domains - len(self._unlabeled_seen), dtype=np.int64)]
            )
        rows, cols = self._group_of_pair.shape
        if rows < n_domains or cols < n_names:
            table = np.full((max(rows, n_domains), max(cols, n_names)), -1, dtype=np.intp)
            table[:rows, :cols] = self._group_of_pair
            self._group_of_pair = table
        self._group_sums.grow(len(self._groups))

    def _group_id(self, domain: int, name: int) -> int:
        if self._group_of_pair[domain, name] < 0:
            self._group_of_pair[domain, name] = self._groups.add((domain, name))
            self._group_sums.grow(len(self._groups))
        return int(self._group_of_pair[domain, name])

    def _group_ids(
        self, domain_ids: np.ndarray, name_ids: np.ndarray, scored: np.ndarray, take: np.ndarray | slice
    ) -> np.ndarray:
        """The (domain, group) id of each prompt, -1 for unlabeled ones; new pairs of scored prompts get ids.
        ``take`` selects the scored prompts (``scored``, or a slice of all)."""
        group_ids = np.where(name_ids > 0, self._group_of_pair[domain_ids, name_ids], -1)
        new = scored[(name_ids[take] > 0) & (group_ids[take] < 0)]
        if new.size:
            for q in new.tolist():
                self._group_id(int(domain_ids[q]), int(name_ids[q]))
            group_ids = np.where(name_ids > 0, self._group_of_pair[domain_ids, name_ids], -1)
        return group_ids

    def _accumulate(self, domains: np.ndarray, groups: np.ndarray, reward_sums: np.ndarray, counts: np.ndarray) -> None:
        """Add the scored prompts of this call to the running sums of eq. 1 (and drop the oldest call's)."""
        self._domain_sums.add(domains, reward_sums, counts)
        labeled = groups >= 0
        self._group_sums.add(groups[labeled], reward_sums[labeled], counts[labeled])
        self._unlabeled_seen += np.bincount(domains[~labeled], minlength=len(self._unlabeled_seen))
        if self.stats_window is None:
            return
        self._calls.append(_Call(domains, groups, reward_sums, counts))
        while len(self._calls) > self.stats_window:
            self._forget(self._calls.popleft())

    def _forget(self, call: _Call) -> None:
        """Take one old call's prompts back out of the windowed statistics."""
        self._domain_sums.remove(call.domains, call.reward_sums, call.reward_counts)
        labeled = call.groups >= 0
        self._group_sums.remove(call.groups[labeled], call.reward_sums[labeled], call.reward_counts[labeled])
        self._unlabeled_seen -= np.bincount(call.domains[~labeled], minlength=len(self._unlabeled_seen))

    def _discover_groups(
        self, r: np.ndarray, domain_ids: np.ndarray, unlabeled: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(ii): cluster each domain's unlabeled prompts; return them (in some order), each one's cluster's
        N and mean reward, and how many clusters their domains have."""
        if not unlabeled.size:
            return unlabeled, np.zeros(0), np.zeros(0), 0
        assert self.feature_dim is not None
        by_domain = domain_ids[unlabeled].argsort(kind="stable")  # a domain's prompts together, in order
        prompts = unlabeled[by_domain]
        blocks = domain_ids[prompts]
        features = rollout_features_by_block(r[prompts], blocks, self.feature_dim)
        cuts = (np.nonzero(blocks[1:] != blocks[:-1])[0] + 1).tolist()
        starts, stops = [0, *cuts], [*cuts, len(prompts)]
        domains = blocks[starts].tolist()
        # 0/1 rewards with every rollout scored (the usual case): each row is its number of ones
        ones = sorted_binary_ones(features, sorted_rows=True)  # rollout features are sorted
        pools = []
        for domain in domains:
            pool = self._pools.get(domain)
            if pool is None:
                kind = RewardPool if ones is None else BinaryRewardPool
                pool = self._pools[domain] = kind(self.cluster_pool_size, self.feature_dim)
            elif ones is None and isinstance(pool, BinaryRewardPool):
                pool = self._pools[domain] = pool.as_reward_pool()
            pools.append(pool)
        if ones is not None and all(isinstance(pool, BinaryRewardPool) for pool in self._pools.values()):
            # Every pool a count per number of ones: one array for all of them, and a prompt's point is
            # its number of ones (-1 if pushed out of its pool within this call). Every domain's pool is
            # fitted, not only those with prompts in this call: the batch of fits is then the same from
            # call to call (`clustering._Batch`), and a pool's fit does not depend on the others.
            ones_list = ones.tolist()
            for pool, start, stop in zip(pools, starts, stops, strict=True):
                pool.extend_ones(ones_list[start:stop])
            called = domains
            domains = sorted(self._pools)
            pools = [self._pools[d] for d in domains]
            counts = np.array([pool.counts for pool in pools], dtype=np.float64)  # (pools, D + 1)
            row_of_domain = {d: i for i, d in enumerate(domains)}
            rows = [row_of_domain[d] for d in called]
            pool_of_prompt = np.array(rows).repeat(np.subtract(stops, starts))
            point = np.where(counts[pool_of_prompt, ones] > 0, ones, -1)
            every = every_sorted_binary_row(self.feature_dim)
            problems = list(zip([every] * len(domains), counts, self._rng_seeds(domains), strict=True))
            first_point = (np.array(rows) * (self.feature_dim + 1)).tolist()
        else:
            points_of_prompts, problems = [], []
            for pool, domain, start, stop in zip(pools, domains, starts, stops, strict=True):
                if isinstance(pool, BinaryRewardPool):
                    added = pool.extend_ones(ones[start:stop].tolist())
                else:
                    added = pool.extend(features[start:stop])
                points, counts, _ = pool.distinct()
                points_of_prompts.append(pool.point_of(added))
                problems.append((points, counts, self._rng_seeds([domain])[0]))
            point = np.concatenate(points_of_prompts)  # each prompt's distinct point within its pool
            first_point = None
        pool_sizes = np.array([len(pool) for pool in pools])
        fits = fit_pools(problems, max_k=self.max_clusters, threshold=self.elbow_threshold)

        # A cluster's N: its share of its domain's pool times the domain's unlabeled prompts so far
        # (counts are whole numbers: their sums are exact in any order).
        mass = np.bincount(  # a row a pool lacks (cluster -1) weighs 0
            np.maximum(fits.clusters, 0),
            weights=np.concatenate([c for _, c, _ in problems]),
            minlength=len(fits.centres),
        )
        clusters_per_pool = fits.cluster_start[1:] - fits.cluster_start[:-1]
        pool_of_cluster = np.arange(len(domains)).repeat(clusters_per_pool)
        seen = self._unlabeled_seen[domains][pool_of_cluster]
        cluster_n = mass / pool_sizes[pool_of_cluster] * seen
        cluster_mean = fits.centres.sum(axis=1) / fits.centres.shape[1]  # np.mean's operations, without its overhead

        if first_point is None:
            first_point = fits.point_start[:-1]
            row_of_block = np.arange(len(starts))
        else:
            row_of_block = np.array(rows)
        n_clusters = int(clusters_per_pool[row_of_block].sum())  # of the pools this call added to
        clusters = fits.clusters[point + np.asarray(first_point).repeat(np.subtract(stops, starts))]
        for q in np.nonzero(point < 0)[0].tolist():  # pushed out of the pool within this call: its nearest centre
            first, stop = fits.cluster_start[row_of_block[bisect.bisect_right(cuts, q)] + np.arange(2)]
            clusters[q] = first + int(((features[q] - fits.centres[first:stop]) ** 2).sum(-1).argmin())
        return prompts, cluster_n[clusters], cluster_mean[clusters], n_clusters

    def _rng_seeds(self, domains: list[int]) -> list[list[int] | Drawn]:
        """Each domain's k-means++ seed for this step, with its draws where they can be drawn ahead."""
        # Derived from state, not a global RNG, so every rank and a resumed run draw the same inits.
        for domain in domains:
            if domain not in self._crc:
                self._crc[domain] = zlib.crc32(str(self._domains.values[domain]).encode())
        if not 0 <= self.seed < 2**32 or self.step >= 2**32:
            return [[self.seed, self.step, self._crc[d]] for d in domains]
        # The draws of _DRAWN_STEPS steps at a time, for every domain seen (`streams`): building a
        # generator per domain and step would cost more than the fits that use it.
        block = self.step - self.step % _DRAWN_STEPS
        if self._drawn_block != block:
            self._drawn_block, self._drawn = block, {}
        missing = [d for d in self._crc if d not in self._drawn]
        if missing:
            self._draw_block(missing)
        at, seed, step, drawn, crc = self.step - block, self.seed, self.step, self._drawn, self._crc
        return [Drawn((seed, step, crc[d]), drawn[d][at]) for d in domains]

    def _draw_block(self, domains: list[int]) -> None:
        steps = self._drawn_block + np.arange(_DRAWN_STEPS)
        words = np.stack(
            [
                np.full((len(domains), _DRAWN_STEPS), self.seed),
                np.broadcast_to(steps, (len(domains), _DRAWN_STEPS)),
                np.array([self._crc[d] for d in domains])[:, None].repeat(_DRAWN_STEPS, axis=1),
            ],
            axis=-1,
        ).reshape(-1, 3)
        draws = as_uniforms(pcg64_draws(words, stream_length(self.max_clusters)))
        draws = draws.reshape(len(domains), _DRAWN_STEPS, -1)
        self._drawn.update(zip(domains, draws, strict=True))

    def _record_info(
        self,
        domain_ids: np.ndarray,
        name_ids: np.ndarray,
        divisors: np.ndarray,
        batch_std: float,
        scored: np.ndarray | slice,
        signal: np.ndarray,
        n_clusters: int,
    ) -> None:
        # The factor each prompt's normalised scores were multiplied by: A = s * weight.
        weight = 1.0 / (divisors * batch_std) if batch_std > 0 else np.zeros_like(divisors)
        domain_names = self._domains.values
        # Per group only prompts whose rewards differ: the weight of an all-equal prompt multiplies zeros.
        # A group's key is its name across domains, "unknown" for unlabeled prompts (and an empty name).
        if len(self._info_key_of_name) != len(self._names):
            keys = self._info_keys = _Codes()
            self._info_key_of_name = np.array([keys.add(name or UNKNOWN) for name in self._names.values], dtype=np.intp)
        key_of_name = self._info_key_of_name
        self.last_info = {
            "weight": _means_by_key(domain_ids[scored], weight[scored], domain_names),
            "group_weight": _means_by_key(key_of_name[name_ids[signal]], weight[signal], self._info_keys.values),
            "batch_std": batch_std,
            "num_clusters": n_clusters,
        }

    # -- views of the statistics, keyed by name -------------------------------------------------

    @property
    def domain_stats(self) -> dict[str, GroupStats]:
        """Per domain seen (and not forgotten): prompts, reward sum and count."""
        sums = self._domain_sums
        return {self._domains.values[d]: sums.stats(d) for d in np.flatnonzero(sums.prompts > 0).tolist()}

    @property
    def group_stats(self) -> dict[str, dict[str, GroupStats]]:
        """Per domain, per demographic group seen: prompts, reward sum and count."""
        out: dict[str, dict[str, GroupStats]] = {}
        sums = self._group_sums
        for g in np.flatnonzero(sums.prompts > 0).tolist():
            d, n = self._groups.values[g]
            out.setdefault(self._domains.values[d], {})[self._names.values[n]] = sums.stats(g)
        return out

    @property
    def unlabeled_seen(self) -> dict[str, int]:
        """Per domain, the unlabeled prompts counted so far (within the window, with `stats_window`)."""
        return {self._domains.values[d]: int(self._unlabeled_seen[d]) for d in np.flatnonzero(self._unlabeled_seen)}

    @property
    def pools(self) -> dict[str, np.ndarray]:
        """Per domain, its pool of recent unlabeled reward vectors, oldest first."""
        return {self._domains.values[d]: pool.rows() for d, pool in self._pools.items()}

    @property
    def history(self) -> list[list[tuple[str, str | None, float, int]]]:
        """With `stats_window`: per call in the window, (domain, group or None, reward sum, count) per prompt."""
        return [self._call_entries(call) for call in self._calls]

    def _call_entries(self, call: _Call) -> list[tuple[str, str | None, float, int]]:
        names, groups = self._names.values, self._groups.values
        return [
            (self._domains.values[d], None if g < 0 else names[groups[g][1]], float(total), int(count))
            for d, g, total, count in zip(
                call.domains.tolist(), call.groups.tolist(), call.reward_sums, call.reward_counts.tolist(), strict=True
            )
        ]

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the next call depends on, as JSON-serialisable built-in types."""
        return {
            "version": 1,
            "step": self.step,
            "feature_dim": self.feature_dim,
            "domain_stats": {d: asdict(s) for d, s in self.domain_stats.items()},
            "group_stats": {d: {g: asdict(s) for g, s in gs.items()} for d, gs in self.group_stats.items()},
            "unlabeled_seen": self.unlabeled_seen,
            "pools": {d: pool.tolist() for d, pool in self.pools.items()},
            "history": [[list(entry) for entry in added] for added in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported FairGRPOAdvantage state version {state.get('version')!r}")
        self.reset()
        self.step = int(state["step"])
        self.feature_dim = state["feature_dim"]

        def domain(name: str) -> int:
            d = self._domains.add(name)
            self._grow()
            return d

        def group(domain_name: str, name: str | None) -> int:
            d, n = domain(domain_name), self._names.add(name)
            self._grow()
            return -1 if name is None else self._group_id(d, n)

        for d, stats in state["domain_stats"].items():
            self._domain_sums.set(domain(d), stats)
        for d, groups in state["group_stats"].items():
            for g, stats in groups.items():
                self._group_sums.set(group(d, g), stats)
        for d, n in state["unlabeled_seen"].items():
            self._unlabeled_seen[domain(d)] = int(n)
        dim = self.feature_dim or 0
        for d, rows in state["pools"].items():
            # As saved, even if longer than this estimator's pool size: the next call cuts it.
            features = np.asarray(rows, dtype=np.float64).reshape(-1, dim)
            ones = sorted_binary_ones(features)
            if ones is None:
                self._pools[domain(d)] = RewardPool(self.cluster_pool_size, dim)
                self._pools[domain(d)].extend(features, truncate=False)
            else:
                self._pools[domain(d)] = BinaryRewardPool(self.cluster_pool_size, dim)
                self._pools[domain(d)].extend_ones(ones.tolist(), truncate=False)
        for added in state.get("history", []):
            entries = [(str(d), g, float(total), int(count)) for d, g, total, count in added]
            self._calls.append(
                _Call(
                    np.array([domain(d) for d, _, _, _ in entries], dtype=np.intp),
                    np.array([group(d, g) for d, g, _, _ in entries], dtype=np.intp),
                    np.array([total for _, _, total, _ in entries], dtype=np.float64),
                    np.array([count for _, _, _, count in entries], dtype=np.int64),
                )
            )


def _sample_std(x: np.ndarray) -> float:
    """``np.std(x, ddof=1)`` of a 1-D array with np.std's own operations, without its Python overhead."""
    centred = x - x.sum() / x.size
    return math.sqrt(float((centred * centred).sum()) / (x.size - 1))


def _means_by_key(keys: np.ndarray, values: np.ndarray, names: Sequence[Hashable]) -> dict[Any, float]:
    """{name: mean of its values} for the keys present."""
    if not keys.size:
        return {}
    counts = np.bincount(keys)
    totals = np.bincount(keys, weights=values)
    return {names[k]: float(totals[k] / counts[k]) for k in np.nonzero(counts)[0].tolist()}
