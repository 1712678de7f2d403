"""Latent groups (paper section 3, step ii): k-means on order-free reward vectors, k by the elbow rule.

A prompt's feature vector is its rollout rewards sorted (`rollout_features`). A domain's pool of such
vectors is clustered once per call as a multiset: its distinct vectors weighted by their counts.

- **0/1 rewards** (every rollout scored): a sorted 0/1 vector is fixed by its number of ones, so a pool
  has at most G + 1 distinct points, and the squared distance between the points with a and b ones is
  |a - b|. The k-means optimum over them is a split into contiguous runs of that order (the tests check
  this against every partition), so `exact_binary_kmeans` tries every such split: exact, no seed, no
  restarts.
- **Graded rewards**, or vectors interpolated around unscored rollouts: Lloyd's k-means with sample
  weights on the distinct vectors in sorted order, best of 10 k-means++ starts seeded by ``seed`` (the
  estimator's `seed`, `FairGRPOConfig.seed`), so a run is repeatable but its clusters are a local optimum.

`elbow_k` then picks k from the inertias of k = 1..max_k.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np

__all__ = [
    "elbow_k",
    "exact_binary_kmeans",
    "fit_latent_groups",
    "kmeans_elbow",
    "nearest_centre",
    "rollout_features",
    "sorted_binary_points",
    "weighted_kmeans",
]


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
    levels = np.linspace(0.0, 1.0, dim)
    out = np.zeros((len(rewards), dim))
    counts = valid.sum(axis=1)
    ordered = np.sort(rewards, axis=1)  # NaN sorts last
    for n in np.unique(counts[counts > 0]).tolist():  # rows with n scored rollouts, at once
        rows = np.flatnonzero(counts == n)
        out[rows] = np.quantile(ordered[rows, :n], levels, axis=1).T
    return out


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


def sorted_binary_points(dim: int) -> np.ndarray:
    """Every sorted 0/1 vector of length ``dim``: row j has j ones, in the last j places."""
    return (np.arange(dim)[None, :] >= dim - np.arange(dim + 1)[:, None]).astype(np.float64)


def exact_binary_kmeans(ones_counts: np.ndarray, dim: int, max_k: int) -> list[tuple[np.ndarray, float]]:
    """The k-means optimum of a pool of sorted 0/1 vectors, for k = 1..max_k: [(centres, inertia)].

    ``ones_counts[j]``: how many vectors of the pool have j ones (j = 0..dim). The optimal clusters are
    contiguous runs of the present points in order of j, so every split of them into k runs is tried.
    With prefix sums of weight W, weighted sum S and weighted squared norm Q, a run's inertia is
    ``Q - |S|^2 / W``; all but the division are whole numbers, so inertias are exact up to rounding.
    Of equally good splits (within rounding) the first is kept: the one with the earliest cuts.
    k stops at the number of distinct points.
    """
    present = np.flatnonzero(ones_counts)
    points = sorted_binary_points(dim)[present]
    w = ones_counts[present].astype(np.float64)
    m = len(present)
    W = np.concatenate([[0.0], np.cumsum(w)])
    S = np.concatenate([np.zeros((1, dim)), np.cumsum(w[:, None] * points, axis=0)])
    Q = np.concatenate([[0.0], np.cumsum(w * present)])  # |x_j|^2 = j
    # cost[a, b]: the inertia of the run of points a..b-1 (a < b).
    a, b = np.arange(m + 1)[:, None], np.arange(m + 1)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = np.maximum(Q[b] - Q[a] - ((S[None, :, :] - S[:, None, :]) ** 2).sum(axis=2) / (W[b] - W[a]), 0.0)

    fits = []
    for k in range(1, min(max_k, m) + 1):
        bounds = _splits(m, k)
        inertia = cost[bounds[:, :-1], bounds[:, 1:]].sum(axis=1)  # one per split
        best = int(np.argmax(inertia <= inertia.min() * (1 + 1e-12) + 1e-12))  # the first within rounding
        starts, stops = bounds[best, :-1], bounds[best, 1:]
        fits.append(((S[stops] - S[starts]) / (W[stops] - W[starts])[:, None], float(inertia[best])))
    return fits


@functools.cache
def _splits(m: int, k: int) -> np.ndarray:
    """Every split of points 0..m-1 into k contiguous runs: bounds [0, cut, ..., m], cuts in lexicographic order."""
    cuts = list(itertools.combinations(range(1, m), k - 1))
    return np.array([(0, *c, m) for c in cuts], dtype=np.intp).reshape(len(cuts), k + 1)


def weighted_kmeans(
    points: np.ndarray, weights: np.ndarray, max_k: int, seed: int, n_init: int = 10, max_iter: int = 100
) -> list[tuple[np.ndarray, float]]:
    """Lloyd's k-means on weighted distinct points, for k = 1..max_k: [(centres, inertia)].

    Each k keeps the best of ``n_init`` k-means++ starts drawn from ``numpy.random.default_rng(seed)``:
    repeatable, but a local optimum. k = 1 is the weighted mean, exactly; k stops at the number of
    distinct points. Plain numpy because the pools are small (a few dozen distinct vectors), where a
    library's per-call overhead would be most of the cost.
    """
    rng = np.random.default_rng(seed)
    mean = (weights[:, None] * points).sum(axis=0) / weights.sum()
    fits = [(mean[None, :], _inertia(points, weights, mean[None, :]))]
    for k in range(2, min(max_k, len(points)) + 1):
        runs = [_lloyd(points, weights, _plus_plus_start(points, weights, k, rng), max_iter) for _ in range(n_init)]
        fits.append(min(runs, key=lambda fit: fit[1]))  # the first of equally good runs
    return fits


def _plus_plus_start(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++: each next centre drawn with probability proportional to weight x squared distance."""
    centres = [points[rng.choice(len(points), p=weights / weights.sum())]]
    for _ in range(1, k):
        spread = weights * ((points[:, None, :] - np.array(centres)[None, :, :]) ** 2).sum(axis=2).min(axis=1)
        centres.append(points[rng.choice(len(points), p=spread / spread.sum())])
    return np.array(centres)


def _lloyd(points: np.ndarray, weights: np.ndarray, centres: np.ndarray, max_iter: int) -> tuple[np.ndarray, float]:
    """Assign to the nearest centre, move each centre to its points' weighted mean, until nothing moves."""
    for _ in range(max_iter):
        member = weights[:, None] * (nearest_centre(points, centres)[:, None] == np.arange(len(centres)))
        mass = member.sum(axis=0)
        # A centre left with no points stays where it is.
        moved = np.where(mass[:, None] > 0, member.T @ points / np.maximum(mass, 1e-300)[:, None], centres)
        if np.array_equal(moved, centres):
            break
        centres = moved
    return centres, _inertia(points, weights, centres)


def _inertia(points: np.ndarray, weights: np.ndarray, centres: np.ndarray) -> float:
    return float((weights * ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).min(axis=1)).sum())


def fit_latent_groups(pool: np.ndarray, max_k: int, threshold: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster a pool of sorted feature vectors: (centres, how many of the pool's vectors each holds).

    k-means on the pool's distinct vectors weighted by their counts, k by `elbow_k`. The pool enters as
    a multiset, so neither its order nor the order of prompts can move the result; 0/1 pools get the
    exact optimum, others Lloyd's (see the module docstring).
    """
    dim = pool.shape[1]
    if ((pool == 0) | (pool == 1)).all() and (pool[:, 1:] >= pool[:, :-1]).all():  # every vector sorted 0/1
        points = sorted_binary_points(dim)
        counts = np.bincount((pool @ np.ones(dim)).astype(np.intp), minlength=dim + 1)  # vectors per number of ones
        fits = exact_binary_kmeans(counts, dim, max_k)
    else:
        points, counts = np.unique(pool, axis=0, return_counts=True)
        fits = weighted_kmeans(points, counts.astype(np.float64), max_k, seed)
    centres = fits[elbow_k([inertia for _, inertia in fits], threshold) - 1][0]
    return centres, np.bincount(nearest_centre(points, centres), weights=counts, minlength=len(centres))


def nearest_centre(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each row's nearest centre (the first on ties), the k-means assignment."""
    return ((features[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1).argmin(axis=1)


def kmeans_elbow(
    features: np.ndarray, max_k: int = 3, threshold: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster sorted feature rows as the estimator does; returns (centres, the label of each row)."""
    centres, _ = fit_latent_groups(np.asarray(features, dtype=np.float64), max_k, threshold, seed)
    return centres, nearest_centre(features, centres)
