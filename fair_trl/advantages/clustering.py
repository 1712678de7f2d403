"""Latent group discovery: weighted k-means with the elbow rule, on order-free reward features.

FairGRPO (paper section 3, step ii) groups prompts whose demographics are unknown by clustering their
rollout-reward vectors within each domain, with k chosen by an elbow rule.

With 0/1 rewards a domain's pool of 1024 recent vectors holds at most G + 1 distinct ones, so k-means runs
on the distinct vectors weighted by their counts (`reward_pools` keeps those counts as the pool slides), and
`kmeans_elbow_pools` fits every domain, every k and every restart of a step in one set of array
operations. It reproduces `weighted_kmeans` draw for draw and operation for operation (the same random
stream, the same sums in the same order), so the batched fits give the centres, labels and elbow choices
that one-at-a-time fits would.
"""

from __future__ import annotations

import functools
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from fair_trl.advantages.reward_pools import every_sorted_binary_row, sorted_binary_ones
from fair_trl.advantages.streams import Drawn, uniform_draws

__all__ = [
    "elbow_k",
    "kmeans_elbow",
    "kmeans_elbow_pools",
    "fit_pools",
    "PoolFits",
    "kmeans_elbow_reference",
    "pairwise_sum",
    "rollout_features",
    "rollout_features_by_block",
    "stream_length",
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


def stream_length(max_k: int, n_init: int = 3) -> int:
    """How many draws one pool's fits take from its generator: one for k = 1, k per restart of each k > 1."""
    return 1 + n_init * (max_k * (max_k + 1) // 2 - 1)


class PoolFits(NamedTuple):
    """The elbow-chosen fit of every pool of a `fit_pools` call, laid end to end in the pools' order."""

    centres: np.ndarray  # (clusters, D): the first pool's centres, then the second's, ...
    cluster_start: np.ndarray  # (pools + 1,): pool p's centres are centres[cluster_start[p] : cluster_start[p + 1]]
    clusters: np.ndarray  # (points,): each point's cluster, an index into centres
    point_start: np.ndarray  # (pools + 1,): pool p's points are clusters[point_start[p] : point_start[p + 1]]

    def per_pool(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(centres, labels) per pool, labels counting from 0 within the pool (-1 stays -1)."""
        c, p = self.cluster_start.tolist(), self.point_start.tolist()
        out = []
        for i in range(len(c) - 1):
            labels = self.clusters[p[i] : p[i + 1]]
            out.append((self.centres[c[i] : c[i + 1]], np.where(labels < 0, -1, labels - c[i])))
        return out


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

    A point with count 0 is not in its pool: it is left out of the fits, and its cluster is -1.
    Sorted 0/1 rows (the features of 0/1 rewards) are fitted on the set of every such row, with count
    0 for those a pool lacks (`_on_all_sorted_binary_rows`): the batch is then the same from step to step.
    """
    options = (max_k, threshold, n_init, max_iter)
    counts = np.concatenate([counts for _, counts, _ in pools])
    absent = counts == 0
    on_all = _on_all_sorted_binary_rows(pools, counts)
    if on_all is not None:
        every_row_pools, index = on_all
        fits = _fit(every_row_pools, *options, sparse=True)
        if fits is not None:
            if index is None:  # the pools were on every row already
                clusters, point_start = fits.clusters, fits.point_start
            else:
                clusters = fits.clusters[index]
                point_start = np.concatenate([[0], np.cumsum([len(points) for points, _, _ in pools])])
            return PoolFits(fits.centres, fits.cluster_start, np.where(absent, -1, clusters), point_start)
    if not absent.any():
        fits = _fit(pools, *options, sparse=False)
        assert fits is not None
        return fits
    # Points with count 0 are not in their pool: fit the others, and give those -1.
    kept = [counts > 0 for _, counts, _ in pools]
    if not all(keep.any() for keep in kept):
        raise ValueError("every pool needs a point with a positive count")
    fits = _fit(
        [(p[keep], c[keep], seed) for (p, c, seed), keep in zip(pools, kept, strict=True)], *options, sparse=False
    )
    assert fits is not None
    clusters = np.full(len(counts), -1)
    clusters[~absent] = fits.clusters
    point_start = np.concatenate([[0], np.cumsum([len(keep) for keep in kept])])
    return PoolFits(fits.centres, fits.cluster_start, clusters, point_start)


_SORTED_BINARY: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}  # id(points) -> (points, ones per row)


def _ones_per_sorted_binary_row(points: np.ndarray) -> np.ndarray | None:
    """`sorted_binary_ones` of ``points``, kept for read-only arrays (RewardPool's, passed again every step
    until its distinct rows change)."""
    known = _SORTED_BINARY.get(id(points))
    if known is not None and known[0] is points:
        return known[1]
    ones = sorted_binary_ones(points)
    if points.base is None and not points.flags.writeable:
        if len(_SORTED_BINARY) > 256:
            _SORTED_BINARY.clear()
        _SORTED_BINARY[id(points)] = (points, ones)
    return ones


def _on_all_sorted_binary_rows(
    pools: Sequence[tuple[np.ndarray, np.ndarray, int | Sequence[int]]], counts: np.ndarray
) -> tuple[Sequence[tuple[np.ndarray, np.ndarray, int | Sequence[int]]], np.ndarray | None] | None:
    """Pools of distinct sorted 0/1 rows of one width D, with whole counts, restated on all D + 1 such rows.

    In byte order the row with m ones comes m-th, so a pool's own points keep their order among all
    rows, and k-means on them, where a count of 0 leaves a row out of every sum, is k-means on the pool
    (`_fit` with ``sparse``). Returns the restated pools and, for each given point laid end to end, its
    index among the restated pools' rows laid end to end (None: the pools were on all rows already,
    as `BinaryRewardPool`'s are); None where the pools are not of this kind. ``counts``: the pools'
    counts laid end to end.
    """
    dim = pools[0][0].shape[1]
    if not (counts.min() >= 0 and (np.floor(counts) == counts).all() and counts.sum() * dim < 2**53):
        return None
    every = every_sorted_binary_row(dim)
    if all(points is every for points, _, _ in pools):
        return pools, None
    ones = []
    for points, _, _ in pools:
        row_ones = _ones_per_sorted_binary_row(points) if points.shape[1] == dim else None
        if row_ones is None:
            return None
        ones.append(row_ones)
    index = np.concatenate(ones) + np.repeat(np.arange(len(pools)) * (dim + 1), [len(o) for o in ones])
    all_counts = np.zeros(len(pools) * (dim + 1))
    all_counts[index] = counts
    rows = all_counts.reshape(len(pools), dim + 1)
    return [(every, rows[i], seed) for i, (_, _, seed) in enumerate(pools)], index


def _fit(
    pools: Sequence[tuple[np.ndarray, np.ndarray, int | Sequence[int]]],
    max_k: int,
    threshold: float,
    n_init: int,
    max_iter: int,
    sparse: bool,
) -> PoolFits | None:
    """`fit_pools` on one batch. ``sparse``: counts of 0 mark points a pool lacks (the caller has made
    every point and count a whole number); None where the fits cannot be certified that way."""
    batch = _Batch.for_points([points for points, _, _ in pools], max_k, n_init)
    counts = np.concatenate([*(counts for _, counts, _ in pools), _NO_WEIGHT])
    weights = counts[batch.weight_source]  # (n, fits)
    given = counts[:-1]
    k_limits, restarts, presence = batch.k_limits, batch.restarts, None
    if sparse:
        presence = _Presence.of(batch, weights[:, batch.first_fit].T > 0, max_k)
        k_limits, restarts = presence.k_limits, presence.restarts
        exact = True
    else:
        # Positive whole counts and whole squared distances between points (0/1 rewards): every k-means++
        # mass and its sums are exact integers, so numpy's order of adding need not be followed.
        exact = (
            batch.whole_distances
            and given.min() > 0
            and not (given % 1).any()
            and given.sum() * batch.most_distant < 2**53
        )
    # The default_rng(seed).random() draws of the one-at-a-time fits (`streams.uniform_draws`), laid end
    # to end after a NaN at position 0, "no draw".
    streams = np.concatenate([_NO_DRAW, *(uniform_draws(pools[i][2], length) for i, length in batch.drawing)])
    uniforms = streams[batch.stream_positions]  # (k, fits)

    seeds = _seed_kmeans_pp(batch, weights, uniforms, exact)
    if seeds is None:  # a fit the batch cannot reproduce (weighted_kmeans stops seeding or raises there)
        return _as_pool_fits(
            [
                kmeans_elbow_reference(
                    points, counts, max_k, threshold, seed.seed if isinstance(seed, Drawn) else seed, n_init
                )
                for points, counts, seed in pools
            ]
        )
    centres = np.ascontiguousarray(batch.points[batch.every[:, None], seeds.T])  # (fits, k, D)
    centres[batch.unused] = np.inf  # a fit with fewer clusters: centres no point is ever nearest to
    # The first assignment is to the seeds, which are points: small pools know those distances.
    if batch.between is not None:
        d2 = batch.between[batch.fit_pool, seeds[:, None, :], batch.point_index]  # (k, n, fits)
        np.copyto(d2, np.inf, where=batch.unused_pairs)
    else:
        d2 = batch.distances(centres)

    # Lloyd's iterations: on whole numbers by exact sums and labels certified against the reference's
    # rounding (`_lloyd_whole`), else with weighted_kmeans's operations and summation order (`_lloyd`).
    fitted = None
    if exact and batch.whole_points and given.sum() * batch.largest < 2**53:
        fitted = _lloyd_whole(batch, d2, centres, weights, max_iter, presence)  # moves centres only if it succeeds
    if fitted is None:
        if sparse:
            return None
        weighted = (batch.points_and_one * weights[:, :, None]).reshape(-1)  # (n, fits, D + 1), flat
        final_d2 = _lloyd(batch, d2, centres, weighted, max_iter)
        labels = final_d2.argmin(axis=0)
        nearest = final_d2.min(axis=0)  # the distance to the label's centre
    else:
        labels, nearest = fitted
    if sparse:
        inertia = np.concatenate([presence.sums(weights * nearest), _PAST_LIMIT])
    else:
        inertia = np.concatenate([_column_sums(weights * nearest, batch.sum_groups), _PAST_LIMIT])

    # Per pool and k, the first of its equally good restarts (argmin's first), then the elbow's k.
    choice = inertia[restarts].argmin(axis=2)
    best = restarts[batch.pool_rows, batch.ks, choice]  # (pools, k): a fit index
    best_inertia = inertia[best].tolist()
    ks = [elbow_k(row[:limit], threshold) for row, limit in zip(best_inertia, k_limits, strict=True)]
    chosen = best[batch.rank, np.array(ks)[batch.rank] - 1]  # (pools,) in the pools' own order
    ks = np.array(ks)[batch.rank]
    centres = centres[chosen][batch.ks < ks[:, None]]
    cluster_start = np.array([0, *itertools.accumulate(ks.tolist())])
    clusters = labels[:, chosen].T[batch.real_by_pool] + cluster_start[:-1].repeat(batch.pool_sizes)
    return PoolFits(centres, cluster_start, clusters, batch.point_start)


class _Presence:
    """What a sparse batch (`_fit`) needs to know of which points each pool has: cached by that pattern,
    which changes far more rarely than the counts.

    A pool fits k up to its own number of points (``k_limits``, ``restarts`` past them point at an
    infinite inertia); fits past that run along but are never picked. In `_lloyd_whole` the ``idle``
    (fits, n) points (absent, or of such a fit) are held at label 0 by ``offset``: |x|^2, plus 1e300
    to every other slot. `sums` adds each fit's present points as numpy would add them alone.
    """

    cache: OrderedDict[tuple, _Presence] = OrderedDict()

    @classmethod
    def of(cls, batch: _Batch, present: np.ndarray, max_k: int) -> _Presence:
        """``present``: (pools in the batch's order, n), which of its points each pool has."""
        key = (id(batch), max_k, present.shape, present.tobytes())
        known = cls.cache.get(key)
        if known is None or known.batch is not batch:
            known = cls.cache[key] = cls(batch, present, max_k)
            while len(cls.cache) > 256:
                cls.cache.popitem(last=False)
        return known

    def __init__(self, batch: _Batch, present: np.ndarray, max_k: int):
        self.batch = batch
        counts = present.sum(axis=1).tolist()
        self.k_limits = [min(max_k, n) for n in counts]
        if self.k_limits == batch.k_limits:  # the usual case: every pool has points enough for every k
            self.restarts = batch.restarts
            self.idle = ~present[batch.fit_pool]  # (fits, n)
        else:
            limits = np.array(self.k_limits)
            self.restarts = np.where(batch.ks[:, :, None] < limits[:, None, None], batch.restarts, batch.n_fits)
            self.idle = ~(present[batch.fit_pool] & (batch.fit_k <= limits[batch.fit_pool])[:, None])
        self.offset = batch.square_norms + np.where(self.idle[:, None, :] & (batch.ks > 0)[:, :, None], 1e300, 0.0)
        # The absent points (zeros) move to the end of each fit's column, where they join no block of 8
        # (`_size_class`); fits are summed in groups of the same number of rows.
        self.order = np.argsort(~present, axis=1, kind="stable")[batch.fit_pool].T  # (n, fits)
        caps = [min(_size_class(n, 1)[1], batch.n_max) for n in counts]
        if len(set(caps)) == 1:
            self.groups = [(None, caps[0])]
        else:
            rows = np.array(caps)[batch.fit_pool]
            self.groups = [(np.flatnonzero(rows == r), r) for r in sorted(set(caps))]

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per fit (column of ``values``, (n, fits)), the sum of its pool's present points, bit for bit."""
        packed = values[self.order, self.batch.every]
        if len(self.groups) == 1:
            return pairwise_sum(packed[: self.groups[0][1]])
        out = np.empty(values.shape[1])
        for columns, rows in self.groups:
            out[columns] = pairwise_sum(packed[:rows, columns])
        return out


_NO_WEIGHT = np.zeros(1)  # what padding weighs
_NO_DRAW = np.full(1, np.nan)
_PAST_LIMIT = np.full(1, np.inf)  # the inertia of a restart past a pool's k limit


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


def _lloyd_whole(
    batch: _Batch,
    d2: np.ndarray,
    centres: np.ndarray,
    weights: np.ndarray,
    max_iter: int,
    presence: _Presence | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """`_lloyd` for whole-number points and weights: final (labels, distance to the label's centre), both
    (n, fits), and ``centres`` moved in place; or None where it cannot be sure to agree with `_lloyd`.

    Every centre is then (an exact whole sum) / (an exact whole mass), rounded once, so it has the
    reference's bits whatever order the sums take: one matrix product per update. A label is the nearest
    centre by ``|c|^2 - 2 c.x + |x|^2``, which can round differently from the reference's sum of squared
    differences, but by far less than ``batch.tie_tolerance``: where the nearest two centres are farther
    apart than that, both pick the same one, and where any pair is closer (a tie, or all but one), this
    gives up and the caller runs `_lloyd`, as it does for a fit still moving after ``max_iter`` updates.
    A fit that has converged is a fixed point of the update (the same labels give the same centres), so
    every fit runs until all have converged, with no bookkeeping of which are done. The distances to the
    final centres are then computed as the reference does, for each point's own centre only. With a
    ``presence``, its ``idle`` points (a count of 0, or a fit that will not be picked) are held at
    label 0 and never in doubt.
    """
    labels = d2.argmin(axis=0).T  # (fits, n): the first assignment, to the seeds, is exact already
    offset = batch.square_norms  # |x|^2, and for a point that does not count, 1e300 to every slot but 0
    if presence is not None:
        labels[presence.idle] = 0
        offset = presence.offset
    w = np.ascontiguousarray(weights.T)[:, None, :]  # (fits, 1, n)
    slots, unused, no_centre, dim = batch.slots, batch.unused[:, :, None], batch.no_centre, batch.dim
    # (c, |c|^2) per centre, so that one product with (-2 x, 1) gives |c|^2 - 2 c.x; an unused slot holds
    # c = 0 and |c|^2 = 1e300, so that no point is ever nearest to it (inf would raise BLAS's invalid flag)
    augmented = np.zeros((batch.n_fits, batch.k_max, dim + 1))
    c = augmented[:, :, :dim]
    np.copyto(c, centres, where=~unused)
    for _ in range(max_iter):
        members = (labels[:, None, :] == slots) * w  # (fits, k, n): each cluster's weights
        sums = members @ batch.points_one  # (fits, k, D + 1): the weighted sums, then the mass
        mass = sums[:, :, dim:]
        np.divide(sums[:, :, :dim], mass, out=c, where=mass > 0)  # an emptied cluster keeps its centre
        np.add(np.add.reduce(c * c, axis=2), no_centre, out=augmented[:, :, dim])
        near = augmented @ batch.points_augmented + offset  # (fits, k, n)
        close = near - near.min(axis=1, keepdims=True) <= batch.tie_tolerance
        if np.count_nonzero(close) > labels.size:  # a doubt: another centre within the tolerance of the nearest
            return None
        new_labels = close.argmax(axis=1)  # the only close one: the nearest
        if (new_labels == labels).all():
            break
        labels = new_labels
    else:
        return None
    np.copyto(centres, c, where=~unused)
    own = centres[batch.every[:, None], labels]  # (fits, n, D): each point's centre
    diff = batch.points - own
    nearest = pairwise_sum((diff * diff).reshape(-1, batch.dim).T).reshape(labels.shape)
    return labels.T, nearest.T


class _Layout:
    """The part of a `_Batch` that depends only on its pools' size classes: where every fit and draw sits.

    A pool's class (`_size_class`) is what its size changes in the batch: its k limit, and how numpy
    groups the sums over its points. Pools are ordered by class, so that fits that sum alike are
    neighbours (`sum_groups`), and padded to the largest pool.
    """

    cache: OrderedDict[tuple, _Layout] = OrderedDict()
    cache_size = 256

    @classmethod
    def get(cls, sizes: Sequence[int], dim: int, max_k: int, n_init: int) -> _Layout:
        key = (tuple(_size_class(n, max_k) for n in sizes), max(sizes), dim, max_k, n_init)
        layout = cls.cache.get(key)
        if layout is None:
            layout = cls.cache[key] = cls(*key)
            while len(cls.cache) > cls.cache_size:
                cls.cache.popitem(last=False)
        else:
            cls.cache.move_to_end(key)
        return layout

    def __init__(self, classes: tuple[tuple[int, int], ...], n_max: int, dim: int, max_k: int, n_init: int):
        self.dim = dim
        n_pools = len(classes)
        self.order = sorted(range(n_pools), key=classes.__getitem__)
        self.k_limits = [classes[i][0] for i in self.order]
        self.n_max, self.k_max = n_max, k_max = n_max, max(self.k_limits)
        fits_per_pool = [1 + n_init * (k - 1) for k in self.k_limits]
        self.first_fit = np.cumsum([0, *fits_per_pool[:-1]]).tolist()
        self.fit_pool = np.repeat(np.arange(n_pools), fits_per_pool)
        self.n_fits = n_fits = len(self.fit_pool)
        self.every = np.arange(n_fits)
        place = self.every - np.repeat(self.first_fit, fits_per_pool)  # 0: k = 1, then k = 2's restarts, ...
        restart = np.where(place == 0, 0, (place - 1) % n_init)
        self.fit_k = k = np.where(place == 0, 1, (place - 1) // n_init + 2)
        # The most rows each fit's sums may run over and still add its points as numpy would
        self.sum_groups = _sum_groups(np.repeat([min(classes[i][1], n_max) for i in self.order], fits_per_pool))
        self.point_index = np.arange(n_max)[None, :, None]
        self.unused = np.arange(k_max)[None, :] >= k[:, None]  # (fits, k)
        self.unused_pairs = self.unused.T[:, None, :]  # (k, 1, fits): where (k, n, fits) distances are to no centre
        self.seeding = [np.flatnonzero((k > j) & (k > 1)) for j in range(k_max)]
        self.rank = np.argsort(self.order)
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
        self.stream_lengths = [stream_length(kl, n_init) for kl in self.k_limits]
        drawn = [n if kl > 1 else 0 for n, kl in zip(self.stream_lengths, self.k_limits, strict=True)]
        offset = 1 + np.cumsum([0, *drawn[:-1]])
        at = offset[self.fit_pool] + 1 + n_init * (k * (k - 1) // 2 - 1) + restart * k  # the fit's first draw
        seed = np.arange(k_max)[:, None]
        self.stream_positions = np.where((seed < k) & (k > 1), at + seed, 0)  # (k, fits)
        self.drawing = [
            (i, n) for i, kl, n in zip(self.order, self.k_limits, self.stream_lengths, strict=True) if kl > 1
        ]
        # Lloyd's sums: the bin of (fit f, cluster c, coordinate or weight d) is bins[0, f, d] + c * (D + 1)
        self.bins = (self.every[:, None] * k_max * (dim + 1) + np.arange(dim + 1))[None]
        self.not_self = ~np.eye(n_max, dtype=bool)


def _size_class(n: int, max_k: int) -> tuple[int, int]:
    """(k limit, the most rows numpy would sum as it sums n): n values are added one by one below 8,
    in blocks of 8 plus a remainder up to 128 (zeros past n join the remainder while the blocks stay
    whole), and by halves beyond, where only n itself sums like n."""
    return min(max_k, n), (7 if n < 8 else n // 8 * 8 + 7 if n <= 128 else n)


class _Batch:
    """Everything about a batch of fits that depends on the pools' points alone, not on their weights.

    A domain's distinct reward vectors change rarely, their counts every step, so this is cached by the
    points' bytes (`for_points`), and the part that depends on their sizes alone by those (`_Layout`).
    Fits are in each pool's stream order: k = 1 (whose one draw does not matter: a single
    cluster ends at the weighted mean wherever it starts), then k = 2's restarts with two draws each,
    k = 3's with three, and so on.
    """

    _cache: OrderedDict[tuple, _Batch] = OrderedDict()
    _cache_size = 64
    # The same cache keyed by the identity of read-only arrays (RewardPool's, until its distinct rows
    # change): looking up a batch is then a tuple of ids, not the points' bytes. An entry holds its
    # arrays, so their ids cannot be reused by other arrays while it is cached.
    _by_identity: OrderedDict[tuple, tuple[tuple[np.ndarray, ...], _Batch]] = OrderedDict()
    # Pools of at most this many distinct points (0/1 rewards: G + 1) keep the distances between their
    # points and are cached; larger ones (graded rewards) change every step, so neither would pay.
    small = 64

    @classmethod
    def for_points(cls, points: Sequence[np.ndarray], max_k: int, n_init: int) -> _Batch:
        frozen = all(p.base is None and not p.flags.writeable for p in points)
        if frozen:
            identity = (max_k, n_init, *map(id, points))
            entry = cls._by_identity.get(identity)
            if entry is not None:
                cls._by_identity.move_to_end(identity)
                return entry[1]
        if max(len(p) for p in points) > cls.small:
            return cls(points, max_k, n_init)
        key = (max_k, n_init, *((p.shape, p.tobytes()) for p in points))
        batch = cls._cache.get(key)
        if batch is None:
            batch = cls._cache[key] = cls(points, max_k, n_init)
            while len(cls._cache) > cls._cache_size:
                cls._cache.popitem(last=False)
        else:
            cls._cache.move_to_end(key)
        if frozen:
            cls._by_identity[identity] = (tuple(points), batch)
            while len(cls._by_identity) > cls._cache_size:
                cls._by_identity.popitem(last=False)
        return batch

    def __init__(self, points: Sequence[np.ndarray], max_k: int, n_init: int):
        if min(len(p) for p in points) < 1:
            raise ValueError("every pool needs at least one point")
        self.__dict__.update(_Layout.get([len(p) for p in points], points[0].shape[1], max_k, n_init).__dict__)
        dim, n_max, order = self.dim, self.n_max, self.order
        # In the pools' own order: each one's size, where its points start in the results, and which
        # of its padded points are real; in the batch's order, where each fit's weights come from in
        # the pools' counts laid end to end (padding: the 0 appended after them).
        self.pool_sizes = np.array([len(p) for p in points])
        self.point_start = np.concatenate([[0], np.cumsum(self.pool_sizes)])
        self.real_by_pool = np.arange(n_max)[None, :] < self.pool_sizes[:, None]
        real = self.real_by_pool[order]  # (pools, n)
        start = self.point_start[order][:, None]
        source = np.where(real, start + np.arange(n_max), start)  # padding: the pool's first point
        self.weight_source = np.where(real, source, self.point_start[-1])[self.fit_pool].T  # (n, fits)
        self.distinct_pairs = real[:, :, None] & real[:, None, :] & self.not_self
        laid = np.concatenate(points)
        padded = laid[source]  # (pools, n, D)
        self.points = padded[self.fit_pool]  # (fits, n, D)
        # Whole-number points have whole differences, squares and sums (while below 2**53): their
        # distances are exact in any order of adding, and `_lloyd_whole` applies.
        largest = float(np.abs(laid).max())
        self.whole_points = bool(4 * largest * largest * dim < 2**53 and (np.floor(laid) == laid).all())
        # For `_lloyd_whole`: the points with a 1 appended (fits, n, D + 1), as (-2 x, 1) per column
        # (fits, D + 1, n), and their squared norms (fits, 1, n); how far
        # apart two distances must be for both ways of computing them to order them alike (each
        # rounds by a few units of 1e-16 of the largest squared norm, which bounds every term); and
        # the largest coordinate, which bounds the exact sums.
        self.slots = np.arange(self.k_max)[None, :, None]
        self.no_centre = np.where(self.unused, 1e300, 0.0)  # |c|^2 of an unused slot
        self.points_one = np.concatenate([self.points, np.ones((self.n_fits, n_max, 1))], axis=2)
        self.points_augmented = np.concatenate(
            [-2.0 * padded.transpose(0, 2, 1), np.ones((len(padded), 1, n_max))], axis=1
        )[self.fit_pool]  # (fits, D + 1, n)
        square_norms = (padded * padded).sum(axis=2)  # (pools, n)
        self.square_norms = square_norms[self.fit_pool][:, None, :]
        self.largest = largest if self.whole_points else np.inf
        self.tie_tolerance = 1e-9 * max(1.0, largest * largest * dim)
        # Squared distance between any two points of a small pool, as a fit computes a point's distance
        # to a centre: k-means++ seeding and the first assignment (to the seeds) need only these.
        if n_max <= self.small:
            if self.whole_points:
                # |x|^2 + |y|^2 - 2 x.y: exact on whole numbers, and one matrix product
                self.between = (
                    square_norms[:, :, None] + square_norms[:, None, :] - 2.0 * (padded @ padded.transpose(0, 2, 1))
                )
            else:
                self.between = _Distances(padded.transpose(1, 0, 2))(padded).transpose(2, 0, 1)
            self.to_seed = None
            self.most_distant = float(self.between.max())
            # Whole numbers, and at least 1 between any two of a pool's points (`_seed_kmeans_pp`).
            self.whole_distances = bool(
                np.isfinite(self.most_distant)
                and (np.floor(self.between) == self.between).all()
                and (self.between[self.distinct_pairs] >= 1).all()
            )
        else:
            self.between = None
            self.to_seed = _Distances(self.points_by_row)
            self.whole_distances = False

    # Needed by `_lloyd` and large pools only: most batches never build them.
    @functools.cached_property
    def points_by_row(self) -> np.ndarray:
        return np.ascontiguousarray(self.points.transpose(1, 0, 2))  # (n, fits, D)

    @functools.cached_property
    def points_and_one(self) -> np.ndarray:
        return np.concatenate([self.points_by_row, np.ones((self.n_max, self.n_fits, 1))], axis=2)

    @functools.cached_property
    def distances(self) -> _Distances:
        return _Distances(self.points_by_row)

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
            # A whole mass is 0 or at least 1: max(total, 1) changes only the totals of fits that draw
            # no j-th seed, and keeps their arithmetic quiet.
            cdf = (mass / np.maximum(np.add.reduce(mass, axis=0), 1.0)).cumsum(axis=0)
            cdf /= np.maximum(cdf[-1], 1e-300)
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
