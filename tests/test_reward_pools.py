"""`BinaryRewardPool` keeps the same sliding window as `RewardPool` for sorted 0/1 rows, as counts per
number of ones; `sorted_binary_ones` decides which pool a domain gets."""

from __future__ import annotations

import numpy as np
import pytest

from fair_trl.advantages.clustering import kmeans_elbow_pools, kmeans_elbow_reference, unique_rows
from fair_trl.advantages.reward_pools import (
    BinaryRewardPool,
    RewardPool,
    every_sorted_binary_row,
    sorted_binary_ones,
)


def binary_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    return np.sort((rng.random((rows, dim)) < rng.random()).astype(float), axis=1)


def test_every_sorted_binary_row_is_in_byte_order_and_read_only():
    rows = every_sorted_binary_row(5)
    np.testing.assert_array_equal(rows.sum(axis=1), np.arange(6))
    unique, _, _ = unique_rows(rows[::-1].copy())
    np.testing.assert_array_equal(unique, rows)  # np.unique's byte order is the number of ones
    with pytest.raises(ValueError):
        rows[0, 0] = 1.0


def test_sorted_binary_ones_accepts_only_sorted_zero_one_rows():
    np.testing.assert_array_equal(sorted_binary_ones(np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])), [2, 0])
    for bad in ([[0.0, 0.5, 1.0]], [[0.0, 2.0, 2.0]], [[0.0, np.nan, 1.0]], [[-1.0, 0.0, 1.0]]):
        assert sorted_binary_ones(np.array(bad)) is None
    unsorted = np.array([[1.0, 0.0, 1.0]])
    assert sorted_binary_ones(unsorted) is None
    np.testing.assert_array_equal(sorted_binary_ones(unsorted, sorted_rows=True), [2])  # trusted as sorted


@pytest.mark.parametrize("capacity", [1, 7, 64])
def test_binary_pool_slides_like_a_reward_pool(capacity):
    rng = np.random.default_rng(capacity)
    binary, general = BinaryRewardPool(capacity, 6), RewardPool(capacity, 6)
    every = every_sorted_binary_row(6)
    for _ in range(80):
        rows = binary_rows(rng, int(rng.integers(0, 12)), 6)
        ones = sorted_binary_ones(rows)
        ids = binary.extend_ones(ones.tolist())
        general_ids = general.extend(rows)
        assert len(binary) == len(general)
        np.testing.assert_array_equal(binary.rows(), general.rows())
        if not len(general):
            continue
        points, counts, _ = general.distinct()
        all_points, all_counts, _ = binary.distinct()
        assert all_points is every
        present = all_counts > 0
        np.testing.assert_array_equal(all_points[present], points)
        np.testing.assert_array_equal(all_counts[present], counts)
        # a row's point: its number of ones, or -1 where it left the pool within the call, as for RewardPool
        general_points = general.point_of(general_ids)
        binary_points = binary.point_of(ids)
        np.testing.assert_array_equal(binary_points < 0, general_points < 0)
        kept = binary_points >= 0
        np.testing.assert_array_equal(all_points[binary_points[kept]], points[general_points[kept]])
    converted = binary.as_reward_pool()
    np.testing.assert_array_equal(converted.rows(), general.rows())
    np.testing.assert_array_equal(converted.distinct()[1], general.distinct()[1])


def test_pools_with_rows_they_lack_fit_as_the_pools_without_them():
    """Count 0 means "not in the pool": the fits are the reference's on the other points, their label -1."""
    rng = np.random.default_rng(5)
    every = every_sorted_binary_row(8)
    pools, own = [], []
    for j in range(6):
        counts = np.where(rng.random(9) < 0.6, rng.integers(1, 40, 9), 0).astype(float)
        counts[j % 9] = max(counts[j % 9], 3.0)  # at least one point
        pools.append((every, counts, [j, 11, 3]))
        own.append((every[counts > 0], counts[counts > 0], [j, 11, 3]))
    halves = np.sort(rng.integers(0, 3, (30, 8)) * 0.5, axis=1)  # not 0/1: the general path drops its zeros
    unique, _, counts = unique_rows(halves)
    counts[::3] = 0
    pools.append((unique, counts, [9, 9]))
    own.append((unique[counts > 0], counts[counts > 0], [9, 9]))
    for (points, counts, seed), (centres, labels) in zip(pools, kmeans_elbow_pools(pools), strict=True):
        ref_centres, ref_labels = kmeans_elbow_reference(points[counts > 0], counts[counts > 0], seed=seed)
        np.testing.assert_array_equal(centres, ref_centres)
        np.testing.assert_array_equal(labels[counts > 0], ref_labels)
        assert (labels[counts == 0] == -1).all()
    assert any(len(centres) > 1 for centres, _ in kmeans_elbow_pools(own))


def test_ties_the_fast_path_cannot_certify_are_fitted_as_the_reference_fits_them():
    """Where a point is as near one centre as another, `_lloyd_whole` gives up and `_lloyd` decides."""
    import fair_trl.advantages.clustering as clustering

    every = every_sorted_binary_row(10)
    counts = np.zeros(11)
    counts[[1, 5, 6]] = 3.0  # with seed 57, x_5 ends up exactly as near two centres
    pools = [(every, counts, [57]), (every, np.arange(11.0) + 1, [1])]
    gave_up = []
    original = clustering._lloyd_whole

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        gave_up.append(result is None)
        return result

    clustering._lloyd_whole = spy
    try:
        fits = kmeans_elbow_pools(pools)
    finally:
        clustering._lloyd_whole = original
    assert gave_up and all(gave_up)  # the sparse batch, then the dense one on the pools without their zeros
    for (points, counts, seed), (centres, labels) in zip(pools, fits, strict=True):
        ref_centres, ref_labels = kmeans_elbow_reference(points[counts > 0], counts[counts > 0], seed=seed)
        np.testing.assert_array_equal(centres, ref_centres)
        np.testing.assert_array_equal(labels[counts > 0], ref_labels)
