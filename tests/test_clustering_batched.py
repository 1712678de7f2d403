"""The batched latent-group machinery equals its one-at-a-time statement, bit for bit.

`kmeans_elbow_pools` fits many pools at once and `RewardPool` keeps a sliding pool as counts of distinct
rows; both must give exactly what `kmeans_elbow_reference` (one `weighted_kmeans` fit at a time) and
`unique_rows` give, or FairGRPO's latent groups would drift from the recorded behaviour.
"""

from __future__ import annotations

import numpy as np
import pytest

from fair_trl.advantages.clustering import (
    kmeans_elbow,
    kmeans_elbow_pools,
    kmeans_elbow_reference,
    pairwise_sum,
    rollout_features,
    rollout_features_by_block,
    unique_rows,
)
from fair_trl.advantages.reward_pools import RewardPool


def random_features(rng: np.random.Generator, kind: str, rows: int, dim: int) -> np.ndarray:
    if kind == "binary":
        values = (rng.random((rows, dim)) < rng.random()).astype(float)
    elif kind == "halves":
        values = rng.integers(0, 4, (rows, dim)) * 0.5
    elif kind == "tenths":
        values = np.round(rng.random((rows, dim)), 1)
    else:
        values = rng.random((rows, dim))
    return np.sort(values, axis=1)


@pytest.mark.parametrize("kind", ["binary", "halves", "tenths", "continuous"])
@pytest.mark.parametrize("max_k", [1, 2, 3, 5])
def test_batched_fits_equal_one_at_a_time_fits(kind, max_k):
    rng = np.random.default_rng(hash((kind, max_k)) % 2**32)
    for trial in range(12):
        dim = int(rng.integers(1, 12))
        pools = []
        for j in range(int(rng.integers(1, 8))):
            unique, _, counts = unique_rows(random_features(rng, kind, int(rng.integers(1, 150)), dim))
            pools.append((unique, counts, [trial, j, 7]))
        n_init = int(rng.integers(1, 5))
        batched = kmeans_elbow_pools(pools, max_k=max_k, n_init=n_init)
        for (points, counts, seed), (centres, labels) in zip(pools, batched, strict=True):
            ref_centres, ref_labels = kmeans_elbow_reference(points, counts, max_k=max_k, seed=seed, n_init=n_init)
            np.testing.assert_array_equal(centres, ref_centres)
            np.testing.assert_array_equal(labels, ref_labels)


@pytest.mark.parametrize("n_init", [1, 2, 4])
def test_batched_fits_follow_the_restart_count(n_init):
    rng = np.random.default_rng(n_init)
    binary = [np.sort((rng.random((200, 10)) < 0.5).astype(float), axis=1) for _ in range(5)]
    pools = [(*unique_rows(features)[::2], [n_init, j]) for j, features in enumerate(binary)]
    assert all(len(points) > 3 for points, _, _ in pools)
    for (points, counts, seed), (centres, labels) in zip(pools, kmeans_elbow_pools(pools, n_init=n_init), strict=True):
        ref_centres, ref_labels = kmeans_elbow_reference(points, counts, seed=seed, n_init=n_init)
        np.testing.assert_array_equal(centres, ref_centres)
        np.testing.assert_array_equal(labels, ref_labels)


def test_kmeans_elbow_labels_every_row_like_the_reference():
    rng = np.random.default_rng(3)
    features = random_features(rng, "binary", 500, 10)
    centres, labels = kmeans_elbow(features, seed=[1, 2, 3])
    unique, inverse, counts = unique_rows(features)
    ref_centres, ref_labels = kmeans_elbow_reference(unique, counts, seed=[1, 2, 3])
    np.testing.assert_array_equal(centres, ref_centres)
    np.testing.assert_array_equal(labels, ref_labels[inverse])
    assert len(centres) > 1


def test_points_too_close_for_seeding_fall_back_to_the_reference():
    # Their squared difference underflows to 0: weighted_kmeans stops seeding, which the batch cannot mirror.
    points, counts = np.array([[0.0], [1e-200]]), np.array([1.0, 2.0])
    spread = np.array([[0.0], [1.0], [3.0], [7.0]])
    (centres, labels), (other, _) = kmeans_elbow_pools([(points, counts, 0), (spread, np.ones(4), 1)])
    ref_centres, ref_labels = kmeans_elbow_reference(points, counts, seed=0)
    np.testing.assert_array_equal(centres, ref_centres)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(other, kmeans_elbow_reference(spread, np.ones(4), seed=1)[0])
    assert len(other) > 1


@pytest.mark.parametrize("length", [1, 2, 7, 8, 9, 15, 16, 17, 128, 129, 300, 1000])
def test_pairwise_sum_adds_in_numpys_order(length):
    rng = np.random.default_rng(length)
    x = rng.standard_normal((length, 50)) * 10.0 ** rng.uniform(-6, 6, (length, 50))
    np.testing.assert_array_equal(pairwise_sum(x), np.ascontiguousarray(x.T).sum(-1))


@pytest.mark.parametrize("capacity", [1, 5, 64])
def test_reward_pool_counts_are_unique_rows_of_its_sliding_window(capacity):
    rng = np.random.default_rng(capacity)
    pool = RewardPool(capacity, 4)
    window = np.empty((0, 4))
    for step in range(60):
        rows = random_features(rng, "halves" if step % 2 else "tenths", int(rng.integers(0, 9)), 4)
        if step % 7 == 0 and len(rows):
            rows[0, 0] = -0.0  # folded into 0.0, as unique_rows folds it
        ids = pool.extend(rows)
        window = np.concatenate([window, rows])[-capacity:]
        np.testing.assert_array_equal(pool.rows(), window + 0.0)
        if len(window):
            points, counts, _ = pool.distinct()
            unique, _, unique_counts = unique_rows(window)
            np.testing.assert_array_equal(points, unique)
            np.testing.assert_array_equal(counts, unique_counts)
        for row, i in zip(rows, ids, strict=True):
            np.testing.assert_array_equal(pool.vectors[i], row + 0.0)  # readable until the next extend


def test_rollout_features_by_block_equal_a_call_per_block():
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 2, (40, 6)).astype(float)
    rewards[3, 2] = np.nan  # block 1 has a NaN: all its rows go through the quantiles
    blocks = np.repeat([0, 1, 2, 3], 10)
    for dim in (6, 4):
        together = rollout_features_by_block(rewards, blocks, dim)
        for block in range(4):
            rows = blocks == block
            np.testing.assert_array_equal(together[rows], rollout_features(rewards[rows], dim))
