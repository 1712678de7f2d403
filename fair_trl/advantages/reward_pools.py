"""A domain's pool of recent unlabeled reward vectors, kept as counts of its distinct rows.

FairGRPO clusters each domain's most recent ``cluster_pool_size`` reward vectors (`clustering`). A step
adds a few rows and drops as many old ones, so a pool keeps counts of its distinct rows as it slides
instead of recounting the whole pool. `BinaryRewardPool` is the common case of 0/1 rewards with every
rollout scored: its rows are sorted 0/1 vectors, one per number of ones, so it is a count per number.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence

import numpy as np

__all__ = ["BinaryRewardPool", "RewardPool", "every_sorted_binary_row", "sorted_binary_ones"]


@functools.cache
def every_sorted_binary_row(dim: int) -> np.ndarray:
    """The ``dim + 1`` sorted 0/1 rows of width ``dim``, row m with m ones: also their byte order. Read-only."""
    rows = np.triu(np.ones((dim + 1, dim)))[::-1].copy()
    rows.flags.writeable = False
    return rows


def sorted_binary_ones(features: np.ndarray, sorted_rows: bool = False) -> np.ndarray | None:
    """Each row's number of ones, if every row is a sorted 0/1 vector (else None). ``sorted_rows``: the
    rows are known to be sorted (as rollout features are), so only their values are checked."""
    if not (features == features.astype(bool)).all():  # 0 and 1 only: NaN, 0.5 or 2 fail
        return None
    if not sorted_rows and not (features[:, 1:] >= features[:, :-1]).all():
        return None
    return features.sum(axis=1).astype(np.intp)


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


class BinaryRewardPool:
    """`RewardPool` for sorted 0/1 rows of width ``dim``: a row is its number of ones m, its id is m.

    `distinct()` gives all ``dim + 1`` such rows (`every_sorted_binary_row`), with count 0 for those the
    pool lacks: the same points every step, which `clustering.fit_pools` reads as the pool's own. Adding
    and dropping rows is a count per m, in plain Python: a step moves a few dozen.
    """

    def __init__(self, capacity: int, dim: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.dim = dim
        self._ring: deque[int] = deque()  # m per row, oldest first
        self._counts = [0] * (dim + 1)

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def counts(self) -> list[int]:
        """The count of each number of ones, 0 to ``dim`` (the live list: do not change it)."""
        return self._counts

    def rows(self) -> np.ndarray:
        return every_sorted_binary_row(self.dim)[np.fromiter(self._ring, dtype=np.intp, count=len(self._ring))]

    def extend_ones(self, ones: Sequence[int], truncate: bool = True) -> list[int]:
        """Append rows given by their numbers of ones, then drop the oldest beyond `capacity`; their ids."""
        ids = list(ones)
        counts, ring = self._counts, self._ring
        for m in ids:
            counts[m] += 1
        ring.extend(ids)
        while truncate and len(ring) > self.capacity:
            counts[ring.popleft()] -= 1
        return ids

    def distinct(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(every sorted 0/1 row, its count here (0 for rows not in the pool), its id)."""
        return every_sorted_binary_row(self.dim), np.array(self._counts, dtype=np.float64), np.arange(self.dim + 1)

    def point_of(self, ids: Sequence[int]) -> np.ndarray:
        """Each id's row index in `distinct()`, -1 for an id no longer in the pool."""
        counts = self._counts
        return np.array([m if counts[m] else -1 for m in ids], dtype=np.intp)

    def as_reward_pool(self) -> RewardPool:
        """The same pool as a `RewardPool`, for rows that are not sorted 0/1."""
        pool = RewardPool(self.capacity, self.dim)
        pool.extend(self.rows(), truncate=False)
        return pool
