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

import numpy as np

__all__ = [
    "RewardPool",
    "elbow_k",
    "kmeans_elbow",
    "kmeans_elbow_pools",
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
    ((centres, labels),) = kmeans_elbow_pools([(unique, counts, seed)], max_k, threshold, n_init)
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


def kmeans_elbow_pools(
    pools: Sequence[tuple[np.ndarray, np.ndarray, int | Sequence[int]]],
    max_k: int = 3,
    threshold: float = 0.1,
    n_init: int = 3,
    max_iter: int = 100,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`kmeans_elbow_reference` for many pools of distinct points at once: (centres, labels) per pool.

    ``pools``: (distinct points (n, D), their counts (n,), seed) each, all with the same D. Every fit of
    every pool (k = 1 .. min(max_k, n), ``n_init`` restarts for k > 1) is one column of a padded batch
    (`_Batch`): per-point quantities are (points, fits) arrays, so what a fit sums over its points is a
    handful of whole-row operations. Each restart draws its k-means++ seeds from the same positions of
    its pool's random stream as the one-at-a-time fits would, and a fit that has converged leaves the
    batch at its fixed point, so the results are the reference's.
    """
    if not pools:
        return []
    batch = _Batch.for_points([points for points, _, _ in pools], max_k, n_init)
    n_fits, n_max, k_max, dim = batch.n_fits, batch.n_max, batch.k_max, batch.dim

    pool_weights = np.zeros((n_max, len(pools)))
    for row, i in enumerate(batch.order):
        pool_weights[: batch.sizes[row], row] = pools[i][1]
    weights = pool_weights[:, batch.fit_pool]  # (n, fits); padding weighs 0
    streams = [np.full(1, np.nan)]  # position 0 of the streams: "no draw"
    for row, i in enumerate(batch.order):
        if batch.k_limits[row] > 1:
            # default_rng(seed) is this generator; the stream is what the one-at-a-time fits draw.
            streams.append(np.random.Generator(np.random.PCG64(pools[i][2])).random(batch.stream_lengths[row]))
    uniforms = np.concatenate(streams)[batch.stream_positions]  # (k, fits)

    seeds = _seed_kmeans_pp(batch, weights, uniforms)
    if seeds is None:  # a fit the batch cannot reproduce (weighted_kmeans stops seeding or raises there)
        return [
            kmeans_elbow_reference(points, weights, max_k, threshold, seed, n_init) for points, weights, seed in pools
        ]
    centres = np.ascontiguousarray(batch.points[np.arange(n_fits)[:, None], seeds.T])  # (fits, k, D)
    centres[batch.unused] = np.inf  # a fit with fewer clusters: centres no point is ever nearest to
    # The first assignment is to the seeds, which are points: small pools know those distances.
    if batch.between is not None:
        d2 = batch.between[batch.fit_pool, seeds[:, None, :], np.arange(n_max)[None, :, None]]  # (k, n, fits)
        d2[batch.unused_pairs] = np.inf
    else:
        d2 = batch.distances(centres)

    # Lloyd's iterations, with weighted_kmeans's operations and summation order: one np.bincount adds each
    # cluster's weighted points and its weight (an extra column) in point order, as np.add.at and
    # np.bincount do there, and padding adds zeros. A fit whose labels stop changing is done
    # (weighted_kmeans breaks there) and leaves the batch.
    weighted = np.concatenate([batch.points_by_row * weights[:, :, None], weights[:, :, None]], axis=2)
    columns = np.arange(dim + 1)
    flat_centres = centres.reshape(-1, dim)  # a view: updates land in `centres`
    labels = np.full((n_max, n_fits), -1)
    final_d2 = np.empty_like(d2)
    active = np.arange(n_fits)
    for iteration in range(max_iter):
        new_labels, _ = _nearest(d2)
        if iteration:  # before the first update every fit moves (from no labels)
            moved = ((new_labels != labels[:, active]) & batch.real[:, active]).any(axis=0)
            if not moved.all():
                final_d2[:, :, active[~moved]] = d2[:, :, ~moved]
                active, d2, new_labels = active[moved], d2[:, :, moved], new_labels[:, moved]
                if not active.size:
                    break
        everyone = len(active) == n_fits
        if everyone:
            labels[:] = new_labels
        else:
            labels[:, active] = new_labels
        bins = ((new_labels + active * k_max)[:, :, None] * (dim + 1) + columns).reshape(-1)
        moving = weighted if everyone else weighted[:, active]
        sums = np.bincount(bins, weights=moving.reshape(-1), minlength=n_fits * k_max * (dim + 1))
        sums = sums.reshape(-1, dim + 1)
        mass = sums[:, dim]
        filled = mass > 0  # an emptied cluster keeps its old centre
        flat_centres[filled] = sums[filled, :dim] / mass[filled, None]
        d2 = batch.distances(centres, active)
    else:
        final_d2[:, :, active] = d2  # stopped at max_iter: the final assignment to the final centres
    labels, nearest = _nearest(final_d2)
    inertia = _column_sums(weights * nearest, batch.sum_groups).tolist()

    results: list = [None] * len(pools)
    for row, i in enumerate(batch.order):
        first = batch.first_fit[row]
        best_per_k = [first]
        for k in range(2, batch.k_limits[row] + 1):
            restarts = range(first + 1 + (k - 2) * n_init, first + 1 + (k - 1) * n_init)
            best_per_k.append(min(restarts, key=inertia.__getitem__))  # the first of equally good restarts
        k = elbow_k([inertia[fit] for fit in best_per_k], threshold)
        fit = best_per_k[k - 1]
        results[i] = (centres[fit, :k].copy(), labels[: batch.sizes[row], fit].copy())
    return results


def _nearest(d2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmin over centres, the minimum) of (k, n, fits) distances; ties go to the first, as argmin's."""
    labels = np.zeros(d2.shape[1:], dtype=np.intp)
    best = d2[0]
    for c in range(1, len(d2)):
        closer = d2[c] < best
        labels[closer] = c
        best = np.minimum(best, d2[c])
    return labels, best


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
    # Pools of at most this many distinct points (0/1 rewards: G + 1) keep the distances between their
    # points and are cached; larger ones (graded rewards) change every step, so neither would pay.
    small = 64

    @classmethod
    def for_points(cls, points: Sequence[np.ndarray], max_k: int, n_init: int) -> _Batch:
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
        return batch

    def __init__(self, points: Sequence[np.ndarray], max_k: int, n_init: int):
        if min(len(p) for p in points) < 1:
            raise ValueError("every pool needs at least one point")
        self.dim = points[0].shape[1]
        self.order = sorted(range(len(points)), key=lambda i: len(points[i]))
        self.sizes = [len(points[i]) for i in self.order]
        self.k_limits = [min(max_k, n) for n in self.sizes]
        self.n_max, self.k_max = max(self.sizes), max(self.k_limits)
        fits_per_pool = [1 + n_init * (k - 1) for k in self.k_limits]
        self.first_fit = np.cumsum([0, *fits_per_pool[:-1]]).tolist()
        self.fit_pool = np.repeat(np.arange(len(points)), fits_per_pool)
        self.fit_k = np.concatenate(
            [[1] + [k for k in range(2, k_limit + 1) for _ in range(n_init)] for k_limit in self.k_limits]
        )
        self.n_fits = len(self.fit_pool)
        fit_sizes = np.repeat(self.sizes, fits_per_pool)
        self.sum_groups = _sum_groups(fit_sizes)
        self.real = np.arange(self.n_max)[:, None] < fit_sizes[None, :]  # (n, fits)
        self.unused = np.arange(self.k_max)[None, :] >= self.fit_k[:, None]  # (fits, k)
        self.unused_pairs = np.broadcast_to(self.unused.T[:, None, :], (self.k_max, self.n_max, self.n_fits))
        self.seeding = [np.flatnonzero((self.fit_k > j) & (self.fit_k > 1)) for j in range(self.k_max)]

        # Where each fit's seeds sit in its pool's stream, offset into the concatenated streams of the
        # pools that draw (position 0 is a NaN: no draw).
        self.stream_lengths = [1 + n_init * sum(range(2, k + 1)) for k in self.k_limits]
        positions, offset = [], 1
        for k_limit, length in zip(self.k_limits, self.stream_lengths, strict=True):
            layout = np.full((1 + n_init * (k_limit - 1), self.k_max), -1)
            row, at = 1, 1
            for k in range(2, k_limit + 1):
                for _ in range(n_init):
                    layout[row, :k] = np.arange(at, at + k)
                    row, at = row + 1, at + k
            positions.append(np.where(layout >= 0, layout + offset, 0))
            offset += length if k_limit > 1 else 0
        self.stream_positions = np.concatenate(positions).T  # (k, fits)

        padded = np.empty((len(points), self.n_max, self.dim))
        for row, i in enumerate(self.order):
            padded[row] = points[i][0]  # padding: weight-0 copies of a real point
            padded[row, : self.sizes[row]] = points[i]
        self.points = padded[self.fit_pool]  # (fits, n, D)
        self.points_by_row = np.ascontiguousarray(self.points.transpose(1, 0, 2))  # (n, fits, D)
        self.distances = _Distances(self.points_by_row, self.k_max)
        # Squared distance between any two points of a small pool, as a fit computes a point's distance
        # to a centre: k-means++ seeding and the first assignment (to the seeds) need only these.
        if self.n_max <= self.small:
            self.between = _Distances(padded.transpose(1, 0, 2), self.n_max)(padded).transpose(2, 0, 1)
            self.to_seed = None
        else:
            self.between = None
            self.to_seed = _Distances(self.points_by_row, 1)

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

    def shape(n: int) -> int:
        return -1 if n < 8 else n // 8 if n <= 128 else n

    groups: list[tuple[int, int, int]] = []
    start = 0
    for stop in range(1, len(sizes) + 1):
        if stop == len(sizes) or shape(int(sizes[stop])) != shape(int(sizes[start])):
            groups.append((start, stop, int(sizes[start:stop].max())))
            start = stop
    return groups


def _column_sums(values: np.ndarray, groups: list[tuple[int, int, int]]) -> np.ndarray:
    """``values[:n_f, f].sum()`` for every column f, bit for bit as numpy sums those n_f values (see `_sum_groups`)."""
    if len(groups) == 1:
        start, stop, rows = groups[0]
        return pairwise_sum(values[:rows])
    out = np.empty(values.shape[1])
    for start, stop, rows in groups:
        out[start:stop] = pairwise_sum(values[:rows, start:stop])
    return out


def _seed_kmeans_pp(batch: _Batch, weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray | None:
    """k-means++ seeds of every fit, as indices of its pool's points (k, fits); None if one stops short.

    Each seed is ``rng.choice(n, p=mass / mass.sum())`` as numpy computes it: the cumulative sum of p,
    divided by its last element, searched (side="right") for the fit's next uniform, that is the number of
    entries <= it. The first seed's mass is the weights, each next one's the weight times the squared
    distance to the nearest seed so far. A fit with k = 1 keeps point 0 (its draw is NaN). None when a
    fit's remaining mass is 0 or not finite: `weighted_kmeans` stops seeding there (or raises).
    """
    seeds = np.zeros((batch.k_max, batch.n_fits), dtype=np.intp)
    mass, nearest = weights, None
    for j in range(batch.k_max if batch.n_max > 1 else 0):
        if j > 0:
            to_seed = batch.seed_distances(seeds[j - 1])
            nearest = to_seed if nearest is None else np.minimum(nearest, to_seed)
            mass = weights * nearest
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

    def __init__(self, points: np.ndarray, k: int):
        n, fits, dim = points.shape
        self.k = k
        self.points = np.ascontiguousarray(np.broadcast_to(points.transpose(2, 0, 1)[:, None], (dim, k, n, fits)))
        self.every = np.arange(fits)

    def __call__(self, centres: np.ndarray, fits: np.ndarray | None = None) -> np.ndarray:
        """(k, n, fits) distances of the points of `fits` (default all) to their centres, ``centres`` (fits, k, D)."""
        dim, k, n, _ = self.points.shape
        if fits is None or len(fits) == len(self.every):
            points, by_fit = self.points, centres.transpose(2, 1, 0)
        else:
            points, by_fit = self.points[..., fits], centres[fits].transpose(2, 1, 0)
        diff = points - by_fit[:, :, None, :]  # (D, k, n, fits)
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
        probe = np.random.default_rng(n).standard_normal((n, 64)) * np.logspace(-8, 8, 64)
        _PAIRWISE_CHECKED[n] = np.array_equal(_pairwise(probe), np.ascontiguousarray(probe.T).sum(-1))
    if not _PAIRWISE_CHECKED[n]:
        return np.ascontiguousarray(x.T).sum(-1)
    return _pairwise(x)


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
        self._points = np.empty((0, dim))

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
        if self._order is None:
            live = [i for i, count in enumerate(self._counts) if count > 0]
            self._order = np.array(sorted(live, key=self._keys.__getitem__), dtype=np.intp)
            self._points = self._vectors[self._order]
        counts = self._counts
        return self._points, np.array([counts[i] for i in self._order.tolist()], dtype=np.float64), self._order


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
