"""Latent group discovery: weighted k-means with the elbow rule, on order-free reward features.

FairGRPO (paper section 3, step ii) groups prompts whose demographics are unknown by clustering their
rollout-reward vectors within each domain, with k chosen by an elbow rule.

With 0/1 rewards a domain's pool of 1024 recent vectors holds at most G + 1 distinct ones, so k-means runs
on the distinct vectors weighted by their counts (`RewardPool` keeps those counts as the pool slides), and
`kmeans_elbow_pools` fits every domain, every k and every restart of a step in one set of array
operations. It reproduces `weighted_kmeans` draw for draw and operation for operation (the same random
stream, the same sums in the same order), so the batched fits give the centres, labels and elbow choices
that one-at-a-time fits would.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "RewardPool",
    "elbow_k",
    "kmeans_elbow",
    "kmeans_elbow_pools",
    "fit_pools",
    "PoolFits",
    "kmeans_elbow_reference",
    "pairwise_sum",
    "rollout_features",
    "rollout_features_by_block",
    "unique_rows",
    "weighted_kmeans",
]


def weighted_kmeans(
    points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means with k-means++ seeding on weighted points; returns (centres, labels, inertia).

    Weights let the caller cluster the distinct feature vectors once each: with 0/1 rewards a pool of
    thousands of prompts has at most G + 1 distinct vectors, so this is exact and much cheaper. This is
    the one-problem statement of the algorithm; `kmeans_elbow_pools` runs many of them at once.
    """
    n = len(points)
    probs = weights / weights.sum()
    centres = [points[rng.choice(n, p=probs)]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        mass = weights * d2
        if mass.sum() <= 0:
            break
        centres.append(points[rng.choice(n, p=mass / mass.sum())])
    centres_arr = np.asarray(centres, dtype=np.float64)
    labels = np.full(n, -1)
    for _ in range(max_iter):
        d2 = ((points[:, None, :] - centres_arr[None]) ** 2).sum(-1)
        new_labels = d2.argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        mass = np.bincount(labels, weights=weights, minlength=len(centres_arr))
        sums = np.zeros_like(centres_arr)
        np.add.at(sums, labels, points * weights[:, None])
        filled = mass > 0  # an emptied cluster keeps its old centre
        centres_arr[filled] = sums[filled] / mass[filled, None]
    d2 = ((points[:, None, :] - centres_arr[None]) ** 2).sum(-1)
    labels = d2.argmin(axis=1)
    inertia = float((weights * d2[np.arange(n), labels]).sum())
    return centres_arr, labels, inertia


def elbow_k(inertias: Sequence[float], threshold: float) -> int:
    """The elbow rule on the best inertia for k = 1, 2, ...: the k to keep.

    Keep adding a cluster while it removes at least ``threshold`` times the inertia the previous step
    removed, counting the single cluster's inertia (the pool's total scatter) as the first step. A pool
    with no spread therefore stays one cluster.
    """
    chosen, previous_drop = 1, inertias[0]
    for k in range(2, len(inertias) + 1):
        if previous_drop <= 0:
            break
        drop = inertias[k - 2] - inertias[k - 1]
        if drop < threshold * previous_drop:
            break
        chosen, previous_drop = k, drop
    return chosen


def kmeans_elbow(
    features: np.ndarray,
    max_k: int = 3,
    threshold: float = 0.1,
    seed: int | Sequence[int] = 0,
    n_init: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster feature rows with k-means, k picked by `elbow_k`; returns (centres, labels per row).

    The best of ``n_init`` k-means++ restarts is fitted for each k up to the number of distinct rows or
    ``max_k``, drawing from ``np.random.default_rng(seed)``: k = 1 first, then k = 2's restarts, and so on.
    """
    unique, inverse, counts = unique_rows(features)
    ((centres, labels),) = fit_pools([(unique, counts, seed)], max_k, threshold, n_init).per_pool()
    return centres, labels[inverse]


def kmeans_elbow_reference(
    points: np.ndarray,
    weights: np.ndarray,
    max_k: int = 3,
    threshold: float = 0.1,
    seed: int | Sequence[int] = 0,
    n_init: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """`kmeans_elbow` on distinct weighted points, one `weighted_kmeans` fit at a time (the plain statement)."""
    rng = np.random.default_rng(seed)
    weights = np.asarray(weights, dtype=np.float64)
    fits = []
    for k in range(1, min(max_k, len(points)) + 1):
        restarts = [weighted_kmeans(points, weights, k, rng) for _ in range(n_init if k > 1 else 1)]
        fits.append(min(restarts, key=lambda fit: fit[2]))  # the first of equally good restarts
    centres, labels, _ = fits[elbow_k([fit[2] for fit in fits], threshold) - 1]
    return centres, labels


class PoolFits(NamedTuple):
    """The elbow-chosen fit of every pool of a `fit_pools` call, laid end to end in the pools' order."""

    centres: np.ndarray  # (clusters, D): the first pool's centres, then the second's, ...
    cluster_start: np.ndarray  # (pools + 1,): pool p's centres are centres[cluster_start[p] : cluster_start[p + 1]]
    clusters: np.ndarray  # (points,): each point's cluster, an index into centres
    point_start: np.ndarray  # (pools + 1,): pool p's points are clusters[point_start[p] : point_start[p + 1]]

    def per_pool(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(centres, labels) per pool, labels counting from 0 within the pool."""
        c, p = self.cluster_start.tolist(), self.point_start.tolist()
        return [(self.centres[c[i] : c[i + 1]], self.clusters[p[i] : p[i + 1]] - c[i]) for i in range(len(c) - 1)]


def kmeans_elbow_pools(
    pools: Sequence[tuple[np.ndarray, np.ndarray, int | Sequence[int]]], **options: Any
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`kmeans_elbow_reference` for many pools of distinct points at once: (centres, labels) per pool.

    ``options``: `fit_pools`'s (max_k, threshold, n_init, max_iter).
    """
    return fit_pools(pools, **options).per_pool() if pools else []


def fit_pools(
    pools: Sequence[tuple[np.ndarray, np.ndarray, int | Sequence[int]]],
    max_k: int = 3,
    threshold: float = 0.1,
    n_init: int = 3,
    max_iter: int = 100,
) -> PoolFits:
    """`kmeans_elbow_reference` for many pools of distinct points at once, as one `PoolFits`.

    ``pools``: (distinct points (n, D), their counts (n,), seed) each, all with the same D. Every fit of
    every pool (k = 1 .. min(max_k, n), ``n_init`` restarts for k > 1) is one column of a padded batch
    (`_Batch`): per-point quantities are (points, fits) arrays, so what a fit sums over its points is a
    handful of whole-row operations. Each restart draws its k-means++ seeds from the same positions of
    its pool's random stream as the one-at-a-time fits would, and a fit that has converged leaves the
    batch at its fixed point, so the results are the reference's.
    """
    batch = _Batch.for_points([points for points, _, _ in pools], max_k, n_init)
    counts = np.concatenate([*(counts for _, counts, _ in pools), _NO_WEIGHT])
    weights = counts[batch.weight_source]  # (n, fits)
    # Positive whole counts and whole squared distances between points (0/1 rewards): every k-means++
    # mass and its sums are exact integers, so numpy's order of adding need not be followed.
    given = counts[:-1]
    exact = (
        batch.whole_distances and given.min() > 0 and not (given % 1).any() and given.sum() * batch.most_distant < 2**53
    )
    # default_rng(seed).random() is (PCG64(seed)'s next 64 bits >> 11) / 2**53: the stream the
    # one-at-a-time fits draw, without building a Generator per pool.
    raw = [np.random.PCG64(_entropy(pools[i][2])).random_raw(length) for i, length in batch.drawing]
    raw = np.concatenate([_NO_RAW, *raw])
    streams = np.concatenate([_NO_DRAW, (raw >> np.uint64(11)) * _DOUBLE_UNIT])  # position 0: "no draw"
    uniforms = streams[batch.stream_positions]  # (k, fits)

    seeds = _seed_kmeans_pp(batch, weights, uniforms, exact)
    if seeds is None:  # a fit the batch cannot reproduce (weighted_kmeans stops seeding or raises there)
        return _as_pool_fits(
            [kmeans_elbow_reference(points, counts, max_k, threshold, seed, n_init) for points, counts, seed in pools]
        )
    centres = np.ascontiguousarray(batch.points[batch.every[:, None], seeds.T])  # (fits, k, D)
    centres[batch.unused] = np.inf  # a fit with fewer clusters: centres no point is ever nearest to
    # The first assignment is to the seeds, which are points: small pools know those distances.
    if batch.between is not None:
        d2 = batch.between[batch.fit_pool, seeds[:, None, :], batch.point_index]  # (k, n, fits)
        np.copyto(d2, np.inf, where=batch.unused_pairs)
    else:
        d2 = batch.distances(centres)

    # Lloyd's iterations, with weighted_kmeans's operations and summation order (`_move_centres`).
    weighted = (batch.points_and_one * weights[:, :, None]).reshape(-1)  # (n, fits, D + 1), flat
    final_d2 = _lloyd(batch, d2, centres, weighted, max_iter)
    labels = final_d2.argmin(axis=0)
    nearest = final_d2.min(axis=0)  # the distance to the label's centre
    inertia = np.concatenate([_column_sums(weights * nearest, batch.sum_groups), _PAST_LIMIT])

    # Per pool and k, the first of its equally good restarts (argmin's first), then the elbow's k.
    choice = inertia[batch.restarts].argmin(axis=2)
    best = batch.restarts[batch.pool_rows, batch.ks, choice]  # (pools, k): a fit index
    best_inertia = inertia[best].tolist()
    ks = [elbow_k(row[:limit], threshold) for row, limit in zip(best_inertia, batch.k_limits, strict=True)]
    chosen = best[batch.rank, np.array(ks)[batch.rank] - 1]  # (pools,) in the pools' own order
    ks = np.array(ks)[batch.rank]
    centres = centres[chosen][batch.ks < ks[:, None]]
    cluster_start = np.concatenate([[0], np.cumsum(ks)])
    clusters = labels[:, chosen].T[batch.real_by_pool] + np.repeat(cluster_start[:-1], batch.pool_sizes)
    return PoolFits(centres, cluster_start, clusters, batch.point_start)


_NO_WEIGHT = np.zeros(1)  # what padding weighs
_NO_DRAW = np.full(1, np.nan)
_NO_RAW = np.zeros(0, dtype=np.uint64)
_PAST_LIMIT = np.full(1, np.inf)  # the inertia of a restart past a pool's k limit
_DOUBLE_UNIT = 1.0 / 9007199254740992.0  # 2**-53, as numpy's next_double scales


def _entropy(seed: int | Sequence[int]) -> int | Sequence[int] | np.ndarray:
    """The seed as SeedSequence's uint32 words: an int list is read word by word, so ints below 2**32
    give the same words as a uint32 array, which SeedSequence takes twice as fast."""
    if isinstance(seed, list | tuple) and all(isinstance(s, int) and 0 <= s < 2**32 for s in seed):
        return np.array(seed, dtype=np.uint32)
    return seed


def _as_pool_fits(fits: Sequence[tuple[np.ndarray, np.ndarray]]) -> PoolFits:
    cluster_start = np.cumsum([0, *(len(centres) for centres, _ in fits)])
    clusters = np.concatenate([labels + start for (_, labels), start in zip(fits, cluster_start, strict=False)])
    point_start = np.cumsum([0, *(len(labels) for _, labels in fits)])
    return PoolFits(np.concatenate([centres for centres, _ in fits]), cluster_start, clusters, point_start)


def _move_centres(labels: np.ndarray, weighted: np.ndarray, bins: np.ndarray, flat_centres: np.ndarray) -> None:
    """One Lloyd's update of every fit's centres (in place) from its points' labels (n, fits).

    One np.bincount adds each cluster's weighted points and its weight (an extra column of ones) in point
    order, as np.add.at and np.bincount do in `weighted_kmeans`; padding adds zeros. ``bins``: where
    cluster 0 of each (point, fit, coordinate) lands, (1, fits, D + 1); ``weighted``: the weighted points.
    """
    width = bins.shape[2]
    sums = np.bincount(
        (labels[:, :, None] * width + bins).reshape(-1),
        weights=weighted,
        minlength=flat_centres.size + len(flat_centres),
    )
    sums = sums.reshape(-1, width)
    mass = sums[:, -1:]
    np.divide(sums[:, :-1], mass, out=flat_centres, where=mass > 0)  # an emptied cluster keeps its old centre


def _lloyd(batch: _Batch, d2: np.ndarray, centres: np.ndarray, weighted: np.ndarray, max_iter: int) -> np.ndarray:
    """Lloyd's iterations from the (k, n, fits) distances to the seeds; the final distances.

    A fit whose labels stop changing is done (weighted_kmeans breaks there) and leaves the batch: the
    arrays hold thousands of (centre, point, coordinate) terms, so fewer fits is less work. Padding
    copies a fit's first point, so its labels change only when that point's do.
    """
    flat_centres = centres.reshape(-1, batch.dim)
    weighted = weighted.reshape(batch.n_max, batch.n_fits, -1)
    labels = np.full((batch.n_max, batch.n_fits), -1)
    final_d2 = np.empty_like(d2)
    active = batch.every
    for iteration in range(max_iter):
        new_labels = d2.argmin(axis=0)
        if iteration:  # before the first update every fit moves (from no labels)
            moved = (new_labels != labels[:, active]).any(axis=0)
            if not moved.all():
                final_d2[:, :, active[~moved]] = d2[:, :, ~moved]
                active, d2, new_labels = active[moved], d2[:, :, moved], new_labels[:, moved]
                if not active.size:
                    return final_d2
        labels[:, active] = new_labels
        _move_centres(new_labels, weighted[:, active].reshape(-1), batch.bins[:, active], flat_centres)
        d2 = batch.distances(centres, active)
    final_d2[:, :, active] = d2  # stopped at max_iter: the final assignment to the final centres
    return final_d2


class _Batch:
    """Everything about a batch of fits that depends on the pools' points alone, not on their weights.

    A domain's distinct reward vectors change rarely, their counts every step, so this is cached by the
    points' bytes (`for_points`). Pools are ordered by size, so that fits of equal size are neighbours
    (`sum_groups`). Fits are in each pool's stream order: k = 1 (whose one draw does not matter: a single
    cluster ends at the weighted mean wherever it starts), then k = 2's restarts with two draws each,
    k = 3's with three, and so on.
    """

    _cache: OrderedDict[tuple, _Batch] = OrderedDict()
    _cache_size = 16
    _last: _Batch | None = None  # the batch of the last call, with `arrays`, the points it was given
    # Pools of at most this many distinct points (0/1 rewards: G + 1) keep the distances between their
    # points and are cached; larger ones (graded rewards) change every step, so neither would pay.
    small = 64

    @classmethod
    def for_points(cls, points: Sequence[np.ndarray], max_k: int, n_init: int) -> _Batch:
        # Read-only arrays passed again (RewardPool's, until its distinct rows change) are the same
        # points: no need to compare their bytes.
        last = cls._last
        if (
            last is not None
            and last.key[:2] == (max_k, n_init)
            and len(last.arrays) == len(points)
            and all(
                a is b and a.base is None and not a.flags.writeable for a, b in zip(last.arrays, points, strict=True)
            )
        ):
            return last
        if max(len(p) for p in points) > cls.small:
            return cls(points, max_k, n_init)
        key = (max_k, n_init, *((p.shape, p.tobytes()) for p in points))
        batch = cls._cache.get(key)
        if batch is None:
            batch = cls._cache[key] = cls(points, max_k, n_init)
            batch.key = key
            while len(cls._cache) > cls._cache_size:
                cls._cache.popitem(last=False)
        else:
            cls._cache.move_to_end(key)
        batch.arrays = tuple(points)
        cls._last = batch
        return batch

    def __init__(self, points: Sequence[np.ndarray], max_k: int, n_init: int):
        if min(len(p) for p in points) < 1:
            raise ValueError("every pool needs at least one point")
        self.key: tuple = ()
        self.arrays: tuple[np.ndarray, ...] = ()
        self.dim = dim = points[0].shape[1]
        n_pools = len(points)
        pool_sizes = [len(p) for p in points]
        self.order = sorted(range(n_pools), key=pool_sizes.__getitem__)
        self.sizes = [pool_sizes[i] for i in self.order]
        self.k_limits = [min(max_k, n) for n in self.sizes]
        self.n_max, self.k_max = n_max, k_max = max(self.sizes), max(self.k_limits)
        fits_per_pool = [1 + n_init * (k - 1) for k in self.k_limits]
        self.first_fit = np.cumsum([0, *fits_per_pool[:-1]]).tolist()
        self.fit_pool = np.repeat(np.arange(n_pools), fits_per_pool)
        self.n_fits = n_fits = len(self.fit_pool)
        self.every = np.arange(n_fits)
        place = self.every - np.repeat(self.first_fit, fits_per_pool)  # 0: k = 1, then k = 2's restarts, ...
        restart = np.where(place == 0, 0, (place - 1) % n_init)
        self.fit_k = k = np.where(place == 0, 1, (place - 1) // n_init + 2)
        fit_sizes = np.repeat(self.sizes, fits_per_pool)
        self.sum_groups = _sum_groups(fit_sizes)
        real = np.arange(n_max)[:, None] < fit_sizes[None, :]  # (n, fits)
        self.point_index = np.arange(n_max)[None, :, None]
        self.unused = np.arange(k_max)[None, :] >= k[:, None]  # (fits, k)
        self.unused_pairs = self.unused.T[:, None, :]  # (k, 1, fits): where (k, n, fits) distances are to no centre
        self.seeding = [np.flatnonzero((k > j) & (k > 1)) for j in range(k_max)]

        # In the pools' own order: each pool's row in the batch, its size, where its points start in
        # the results, which of its padded points are real, and where each fit's weights come from in
        # the pools' counts laid end to end (padding: the 0 appended after them).
        self.rank = np.argsort(self.order)
        self.pool_sizes = np.array(pool_sizes)
        self.point_start = np.concatenate([[0], np.cumsum(self.pool_sizes)])
        self.real_by_pool = np.arange(n_max)[None, :] < self.pool_sizes[:, None]
        source = self.point_start[np.array(self.order)][self.fit_pool] + np.arange(n_max)[:, None]
        self.weight_source = np.where(real, source, self.point_start[-1])  # (n, fits)
        # Per pool row and k (k = 1 first), the fits of its restarts; past its k limit, a fit index
        # one beyond the last, whose inertia is taken as infinite.
        ks, restarts = np.arange(1, k_max + 1)[None, :, None], np.arange(n_init)[None, None, :]
        first, limit = np.array(self.first_fit)[:, None, None], np.array(self.k_limits)[:, None, None]
        later = np.where(ks <= limit, first + 1 + (ks - 2) * n_init + restarts, n_fits)
        self.restarts = np.where(ks == 1, first, later)
        self.pool_rows, self.ks = np.arange(n_pools)[:, None], np.arange(k_max)[None, :]

        # Where each fit's seeds sit in its pool's stream, offset into the concatenated streams of the
        # pools that draw (position 0 is a NaN: no draw). A pool's stream is the k = 1 draw, then k
        # draws for each restart of each k = 2, 3, ...
        self.stream_lengths = [1 + n_init * (kl * (kl + 1) // 2 - 1) for kl in self.k_limits]
        drawn = [n if kl > 1 else 0 for n, kl in zip(self.stream_lengths, self.k_limits, strict=True)]
        offset = 1 + np.cumsum([0, *drawn[:-1]])
        at = offset[self.fit_pool] + 1 + n_init * (k * (k - 1) // 2 - 1) + restart * k  # the fit's first draw
        seed = np.arange(k_max)[:, None]
        self.stream_positions = np.where((seed < k) & (k > 1), at + seed, 0)  # (k, fits)
        self.drawing = [
            (i, n) for i, kl, n in zip(self.order, self.k_limits, self.stream_lengths, strict=True) if kl > 1
        ]

        # Padding: weight-0 copies of the pool's first point.
        laid = np.concatenate([points[i] for i in self.order])
        row_start = np.cumsum([0, *self.sizes[:-1]])[:, None]
        padded = laid[
            np.where(np.arange(n_max) < np.array(self.sizes)[:, None], row_start + np.arange(n_max), row_start)
        ]
        self.points = padded[self.fit_pool]  # (fits, n, D)
        self.points_by_row = np.ascontiguousarray(self.points.transpose(1, 0, 2))  # (n, fits, D)
        self.points_and_one = np.concatenate([self.points_by_row, np.ones((n_max, n_fits, 1))], axis=2)
        # Lloyd's sums: the bin of (fit f, cluster c, coordinate or weight d) is bins[0, f, d] + c * (D + 1)
        self.bins = (self.every[:, None] * k_max * (dim + 1) + np.arange(dim + 1))[None]
        self.distances = _Distances(self.points_by_row)
        # Squared distance between any two points of a small pool, as a fit computes a point's distance
        # to a centre: k-means++ seeding and the first assignment (to the seeds) need only these.
        if n_max <= self.small:
            self.between = _Distances(padded.transpose(1, 0, 2))(padded).transpose(2, 0, 1)
            self.to_seed = None
            self.most_distant = float(self.between.max())
            # Whole numbers, and at least 1 between any two of a pool's points (`_seed_kmeans_pp`).
            real = np.arange(n_max) < np.array(self.sizes)[:, None]
            pairs = real[:, :, None] & real[:, None, :] & ~np.eye(n_max, dtype=bool)
            self.whole_distances = bool(
                np.isfinite(self.most_distant) and (self.between % 1 == 0).all() and (self.between[pairs] >= 1).all()
            )
        else:
            self.between = None
            self.to_seed = _Distances(self.points_by_row)
            self.whole_distances = False

    def seed_distances(self, seeds: np.ndarray) -> np.ndarray:
        """(n, fits): each point's squared distance to its fit's seed (an index into the fit's points)."""
        if self.between is not None:
            return self.between[self.fit_pool, seeds, np.arange(self.n_max)[:, None]]
        chosen = self.points[np.arange(self.n_fits), seeds][:, None, :]  # (fits, 1, D)
        return self.to_seed(chosen)[0]


def _sum_groups(sizes: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of neighbouring columns whose sums over their own `sizes` rows one call can do: (start, stop, rows).

    numpy sums fewer than 8 values one by one, and up to 128 in 8 interleaved partial sums (blocks of 8)
    plus the remainder one by one; zeros past a column's own size only add to the remainder, so columns
    with the same number of whole blocks (or all under 8) sum together over their largest size.
    """

    shape = np.where(sizes < 8, -1, np.where(sizes <= 128, sizes // 8, sizes))
    starts = [0, *(np.flatnonzero(shape[1:] != shape[:-1]) + 1).tolist()]
    stops = [*starts[1:], len(sizes)]
    rows = np.maximum.reduceat(sizes, starts).tolist()
    return list(zip(starts, stops, rows, strict=True))


def _column_sums(values: np.ndarray, groups: list[tuple[int, int, int]]) -> np.ndarray:
    """``values[:n_f, f].sum()`` for every column f, bit for bit as numpy sums those n_f values (see `_sum_groups`)."""
    if len(groups) == 1:
        start, stop, rows = groups[0]
        return pairwise_sum(values[:rows])
    out = np.empty(values.shape[1])
    for start, stop, rows in groups:
        out[start:stop] = pairwise_sum(values[:rows, start:stop])
    return out


def _seed_kmeans_pp(batch: _Batch, weights: np.ndarray, uniforms: np.ndarray, exact: bool = False) -> np.ndarray | None:
    """k-means++ seeds of every fit, as indices of its pool's points (k, fits); None if one stops short.

    Each seed is ``rng.choice(n, p=mass / mass.sum())`` as numpy computes it: the cumulative sum of p,
    divided by its last element, searched (side="right") for the fit's next uniform, that is the number of
    entries <= it. The first seed's mass is the weights, each next one's the weight times the squared
    distance to the nearest seed so far. A fit with k = 1 keeps point 0 (its draw is NaN). None when a
    fit's remaining mass is 0 or not finite: `weighted_kmeans` stops seeding there (or raises).
    ``exact``: every mass is a whole number whose sums are exact, so a plain sum gives numpy's.
    """
    seeds = np.zeros((batch.k_max, batch.n_fits), dtype=np.intp)
    mass, nearest = weights, None
    for j in range(batch.k_max if batch.n_max > 1 else 0):
        if j > 0:
            to_seed = batch.seed_distances(seeds[j - 1])
            nearest = to_seed if nearest is None else np.minimum(nearest, to_seed)
            mass = weights * nearest
        if exact:  # and a pool's points are at least 1 apart: every fit that draws has mass left
            total = mass.sum(axis=0)
        else:
            total = _column_sums(mass, batch.sum_groups)
            drawing = total[batch.seeding[j]]  # the fits that draw a j-th seed; NaN fails the test too
            if drawing.size and not (drawing.min() > 0 and drawing.max() < np.inf):
                return None
        total[total <= 0] = 1.0  # fits that draw no j-th seed: keep their arithmetic quiet
        cdf = np.cumsum(mass / total, axis=0)
        np.divide(cdf, cdf[-1], out=cdf, where=cdf[-1] > 0)
        seeds[j] = np.minimum((cdf <= uniforms[j]).sum(axis=0), batch.n_max - 1)
    seeds[:, batch.fit_k == 1] = 0
    return seeds


class _Distances:
    """``((points[:, None] - centres[None]) ** 2).sum(-1)`` for every fit's points and centres, bit for bit.

    numpy reduces a short last axis one row at a time, which dominates small batched fits; here every
    (centre, point, fit) triple is a column of a (D, triples) array and the D terms are added row by row in
    the order numpy's pairwise summation adds them (`pairwise_sum`). ``points``: (n, fits, D).
    """

    def __init__(self, points: np.ndarray):
        self.points = np.ascontiguousarray(points.transpose(2, 0, 1))[:, None]  # (D, 1, n, fits)
        self.every = np.arange(points.shape[1])
        self.by_k: dict[int, np.ndarray] = {}  # (D, k, n, fits) copies: contiguous operands subtract faster

    def _points(self, k: int) -> np.ndarray:
        if k not in self.by_k:
            self.by_k[k] = np.repeat(self.points, k, axis=1)
        return self.by_k[k]

    def __call__(self, centres: np.ndarray, fits: np.ndarray | None = None) -> np.ndarray:
        """(k, n, fits) distances of the points of `fits` (default all) to their centres, ``centres`` (fits, k, D)."""
        dim, _, n, _ = self.points.shape
        k = centres.shape[1]
        if fits is None or len(fits) == len(self.every):
            points, by_fit = self._points(k), centres.transpose(2, 1, 0)
        else:
            points, by_fit = self._points(k)[..., fits], centres[fits].transpose(2, 1, 0)
        diff = points - by_fit[:, :, None, :]  # (D, k, n, fits), every (centre, point) pair
        return pairwise_sum((diff**2).reshape(dim, -1)).reshape(k, n, -1)


_PAIRWISE_CHECKED: dict[int, bool] = {}


def pairwise_sum(x: np.ndarray) -> np.ndarray:
    """The sum over axis 0 of a (n, m) array, equal bit for bit to ``x.T.sum(-1)`` on the transposed copy.

    numpy sums a contiguous run of n float64 values pairwise: fewer than 8 one by one; up to 128 in 8
    interleaved partial sums, combined as a tree, then the remainder; more by halves (a multiple of 8
    first). Written out on whole rows, the sums of m short runs take a handful of array additions. The
    order is checked against numpy once per n (on random values, where a different order shows up in
    the last bits), falling back to numpy's own reduction if they ever differ.
    """
    n = len(x)
    if n not in _PAIRWISE_CHECKED:
        # Every short length at once on first use (a few ms, once), so that a run's first steps, which
        # meet new lengths as the pools fill, do not each pay for their own check.
        _check_pairwise(range(1, 130) if n < 130 else [n])
    if not _PAIRWISE_CHECKED[n]:
        return np.ascontiguousarray(x.T).sum(-1)
    return _pairwise(x)


def _check_pairwise(lengths: Sequence[int]) -> None:
    probe = np.random.default_rng(0).standard_normal((max(lengths), 64)) * np.logspace(-8, 8, 64)
    for n in lengths:
        _PAIRWISE_CHECKED[n] = np.array_equal(_pairwise(probe[:n]), np.ascontiguousarray(probe[:n].T).sum(-1))


def _pairwise(x: np.ndarray) -> np.ndarray:
    n = len(x)
    if n < 8:
        total = x[0] + 0.0
        for i in range(1, n):
            total = total + x[i]
        return total
    if n <= 128:
        whole = n - n % 8
        partial = x[:8]
        for i in range(8, whole, 8):
            partial = partial + x[i : i + 8]
        # ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)), a level at a time
        pairs = partial[0::2] + partial[1::2]
        quads = pairs[0::2] + pairs[1::2]
        total = quads[0] + quads[1]
        for i in range(whole, n):
            total = total + x[i]
        return total
    half = n // 2
    half -= half % 8
    return _pairwise(x[:half]) + _pairwise(x[half:])


def unique_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct rows, row -> distinct index, counts); a byte view sorts 10x faster than axis=0."""
    x = np.ascontiguousarray(x, dtype=np.float64) + 0.0  # + 0.0 folds -0.0 into 0.0
    rows = x.view(np.dtype((np.void, x.itemsize * x.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(rows, return_index=True, return_inverse=True, return_counts=True)
    return x[first], inverse.reshape(-1), counts


class RewardPool:
    """One domain's most recent ``capacity`` feature rows, kept as counts of their distinct rows.

    `distinct()` is what `unique_rows` returns for `rows()`, without sorting the whole pool every step:
    rows are keyed by their bytes (after folding -0.0 into 0.0), and the distinct rows come out in byte
    order, which is the order numpy's unique gives the same byte view. A step adds a few rows, so the
    bookkeeping is plain Python on ids.
    """

    def __init__(self, capacity: int, dim: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.dim = dim
        self._ring: deque[int] = deque()  # the pool's rows as ids, oldest first
        self._index: dict[bytes, int] = {}
        self._keys: list[bytes | None] = []
        self._counts: list[int] = []
        self._vectors = np.empty((0, dim))
        self._free: list[int] = []
        self._order: np.ndarray | None = None  # live ids in byte order, until the live set changes
        self._live: list[int] = []
        self._points = np.empty((0, dim))
        self._point_of_id = np.empty(0, dtype=np.intp)

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def vectors(self) -> np.ndarray:
        """The row of each id (rows of ids no longer in the pool stay readable until the next `extend`)."""
        return self._vectors

    def rows(self) -> np.ndarray:
        return self._vectors[np.fromiter(self._ring, dtype=np.intp, count=len(self._ring))]

    def extend(self, features: np.ndarray, truncate: bool = True) -> list[int]:
        """Append rows, then drop the oldest beyond `capacity` (unless not `truncate`); returns each row's id."""
        x = np.ascontiguousarray(features, dtype=np.float64) + 0.0
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"pool rows must have {self.dim} values, got shape {x.shape}")
        width = x.itemsize * self.dim
        buffer = x.tobytes()
        counts, ring, index = self._counts, self._ring, self._index
        before: dict[int, int] = {}  # count of each id touched, before this call
        ids = []
        for i in range(len(x)):
            key = buffer[i * width : (i + 1) * width]
            found = index.get(key)
            if found is None:
                found = self._new_id(key, x[i])
            before.setdefault(found, counts[found])
            counts[found] += 1
            ring.append(found)
            ids.append(found)
        while truncate and len(ring) > self.capacity:
            old = ring.popleft()
            before.setdefault(old, counts[old])
            counts[old] -= 1
        for touched, count in before.items():
            if (count > 0) != (counts[touched] > 0):
                self._order = None
            if counts[touched] == 0:  # out of the pool (possibly added and pushed out in this call)
                del index[self._keys[touched]]
                self._keys[touched] = None
                self._free.append(touched)
        return ids

    def _new_id(self, key: bytes, row: np.ndarray) -> int:
        if self._free:
            new = self._free.pop()
        else:
            new = len(self._keys)
            self._keys.append(None)
            self._counts.append(0)
            if new >= len(self._vectors):
                self._vectors = np.concatenate([self._vectors, np.zeros((max(16, len(self._vectors)), self.dim))])
        self._keys[new] = key
        self._index[key] = new
        self._vectors[new] = row
        return new

    def distinct(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distinct rows in byte order, their counts, their ids)."""
        self._sort()
        counts = self._counts
        return self._points, np.array([counts[i] for i in self._live], dtype=np.float64), self._order

    def point_of(self, ids: Sequence[int]) -> np.ndarray:
        """Each id's index among the distinct rows of `distinct()`, -1 for an id no longer in the pool."""
        self._sort()
        return self._point_of_id[np.asarray(ids, dtype=np.intp)]

    def _sort(self) -> None:
        if self._order is None:
            live = sorted((i for i, count in enumerate(self._counts) if count > 0), key=self._keys.__getitem__)
            self._order = np.array(live, dtype=np.intp)
            self._live = live
            self._points = self._vectors[self._order]
            self._points.flags.writeable = False  # the same array until the distinct rows change (see _Batch)
            self._point_of_id = np.full(len(self._vectors), -1)
            self._point_of_id[self._order] = np.arange(len(live))


def rollout_features(rewards: np.ndarray, dim: int) -> np.ndarray:
    """One order-free feature vector per prompt: its rollout rewards sorted, at ``dim`` quantile levels.

    Rollouts are exchangeable samples, so their order means nothing; sorting makes the vector a
    function of the multiset of rewards alone (the prompt's empirical quantile function). With every
    rollout scored and ``dim == G`` the vector is exactly the sorted rewards; NaN rollouts are left
    out and the quantiles interpolated from the rest, which also maps any G onto a fixed ``dim``.
    """
    valid = ~np.isnan(rewards)
    if rewards.shape[1] == dim and valid.all():
        return np.sort(rewards, axis=1)
    return _quantile_features(rewards, valid, dim)


def _quantile_features(rewards: np.ndarray, valid: np.ndarray, dim: int) -> np.ndarray:
    # np.quantile along rows of equal length gives each row what it gives the row alone.
    levels = np.linspace(0.0, 1.0, dim)
    out = np.zeros((len(rewards), dim))
    counts = valid.sum(axis=1)
    ordered = np.sort(rewards, axis=1)  # NaN sorts last
    for n in np.unique(counts[counts > 0]).tolist():
        rows = np.flatnonzero(counts == n)
        out[rows] = np.quantile(ordered[rows, :n], levels, axis=1).T
    return out


def rollout_features_by_block(rewards: np.ndarray, blocks: np.ndarray, dim: int) -> np.ndarray:
    """`rollout_features` of each block of rows (``blocks``: a block id per row) as if called per block.

    A block whose rows are all fully scored gets sorted rewards; the others go through the quantiles
    (which can differ from the sorted values in the last bit), as a call per block would.
    """
    valid = ~np.isnan(rewards)
    if rewards.shape[1] == dim and valid.all():
        return np.sort(rewards, axis=1)
    out = _quantile_features(rewards, valid, dim)
    if rewards.shape[1] == dim:
        incomplete = np.unique(blocks[~valid.all(axis=1)])
        sortable = ~np.isin(blocks, incomplete)
        out[sortable] = np.sort(rewards[sortable], axis=1)
    return out
