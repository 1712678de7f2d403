"""The first draws of ``np.random.default_rng(seed)`` for many seeds at once.

FairGRPO's k-means++ seeds come from one generator per domain and step (`FairGRPOAdvantage._rng_seeds`).
Building a generator costs more than the draws it makes, and it is paid for every domain at every step.
`pcg64_draws` writes out numpy's SeedSequence and PCG64 on arrays, one row per seed, so a block of
future steps is drawn in one go, with the same 64-bit outputs as ``np.random.PCG64(seed).random_raw``
(a test checks this). `Drawn` carries a seed with its draws into `clustering.fit_pools`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Drawn", "as_uniforms", "pcg64_draws", "uniform_draws"]

# numpy/random/bit_generator.pyx (SeedSequence, pool size 4) and numpy/random/src/pcg64 (PCG64)
_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645


class Drawn(NamedTuple):
    """A seed (its uint32 words) and the first draws of ``np.random.default_rng(seed).random()``."""

    seed: tuple[int, ...]
    uniforms: np.ndarray


def as_uniforms(raw: np.ndarray) -> np.ndarray:
    """``Generator.random()`` from PCG64's 64-bit draws: the top 53 bits, scaled by 2**-53, as numpy does."""
    return (raw >> np.uint64(11)) * (1.0 / 9007199254740992.0)


def uniform_draws(seed: int | Sequence[int] | Drawn, length: int) -> np.ndarray:
    """The first ``length`` draws of ``np.random.default_rng(seed).random()``, from `Drawn` where it has them."""
    if isinstance(seed, Drawn):
        if len(seed.uniforms) >= length:
            return seed.uniforms[:length]
        seed = seed.seed
    if isinstance(seed, list | tuple) and all(isinstance(s, int) and 0 <= s <= _M32 for s in seed):
        seed = np.array(seed, dtype=np.uint32)  # SeedSequence reads such a list word by word, an array faster
    return as_uniforms(np.random.PCG64(seed).random_raw(length))


def _hash_constants(start: int, mult: int, count: int) -> list[tuple[int, int]]:
    """SeedSequence's running hash constant: (the value xored in, the value multiplied by) per call."""
    out, constant = [], start
    for _ in range(count):
        before = constant
        constant = (constant * mult) & _M32
        out.append((before, constant))
    return out


def _seed_pools(words: np.ndarray) -> np.ndarray:
    """SeedSequence(words).pool for each row of ``words`` ((N, W) uint32): (N, 4) uint32."""
    n, width = words.shape
    calls = _POOL + _POOL * (_POOL - 1) + max(0, width - _POOL) * _POOL
    constants = iter(_hash_constants(_INIT_A, _MULT_A, calls))

    def hashmix(value: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
        value = (value ^ np.array([x for x, _ in pairs], dtype=np.uint32)) * np.array(
            [m for _, m in pairs], dtype=np.uint32
        )
        return value ^ (value >> np.uint32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return result ^ (result >> np.uint32(16))

    first = np.zeros((n, _POOL), dtype=np.uint32)
    first[:, : min(width, _POOL)] = words[:, :_POOL]
    mixer = hashmix(first, [next(constants) for _ in range(_POOL)])
    for source in range(_POOL):
        targets = [t for t in range(_POOL) if t != source]
        hashed = hashmix(mixer[:, source : source + 1], [next(constants) for _ in targets])
        mixer[:, targets] = mix(mixer[:, targets], hashed)
    for source in range(_POOL, width):
        hashed = hashmix(words[:, source : source + 1], [next(constants) for _ in range(_POOL)])
        mixer = mix(mixer, hashed)
    return mixer


def _generate_state(pools: np.ndarray) -> np.ndarray:
    """SeedSequence.generate_state(4, np.uint64) from each row's pool: (N, 4) uint64."""
    pairs = _hash_constants(_INIT_B, _MULT_B, 8)
    value = pools[:, [0, 1, 2, 3, 0, 1, 2, 3]] ^ np.array([x for x, _ in pairs], dtype=np.uint32)
    value = value * np.array([m for _, m in pairs], dtype=np.uint32)
    value = (value ^ (value >> np.uint32(16))).astype(np.uint64)
    return value[:, 0::2] | (value[:, 1::2] << np.uint64(32))  # little-endian pairs of words


def _high_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The high 64 bits of the 128-bit products a * b (uint64, elementwise)."""
    low32 = np.uint64(_M32)
    a0, a1, b0, b1 = a & low32, a >> np.uint64(32), b & low32, b >> np.uint64(32)
    cross = (a0 * b0 >> np.uint64(32)) + (a1 * b0 & low32) + (a0 * b1 & low32)
    return a1 * b1 + (a1 * b0 >> np.uint64(32)) + (a0 * b1 >> np.uint64(32)) + (cross >> np.uint64(32))


def _times(high: np.ndarray, low: np.ndarray, constant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) * constant mod 2**128; ``constant``: (..., 2) uint64 words (high, low)."""
    c_high, c_low = constant[..., 0], constant[..., 1]
    return _high_product(low, c_low) + low * c_high + high * c_low, low * c_low


def _plus(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    low = a[1] + b[1]
    return a[0] + b[0] + (low < a[1]).astype(np.uint64), low


def _words128(values: Sequence[int]) -> np.ndarray:
    return np.array([[v >> 64, v & _M64] for v in values], dtype=np.uint64)


def pcg64_draws(words: np.ndarray, length: int) -> np.ndarray:
    """``np.random.PCG64(row).random_raw(length)`` for each row of ``words`` ((N, W) uint32): (N, length).

    PCG64 steps its 128-bit state by ``state * MULT + inc``; draw i is then ``MULT**i * state0 + inc *
    (MULT**(i-1) + ... + 1)``, so all draws of all rows come from two 128-bit products each.
    """
    with np.errstate(over="ignore"):
        state = _generate_state(_seed_pools(np.asarray(words, dtype=np.uint32)))
        inc = ((state[:, 2] << np.uint64(1)) | (state[:, 3] >> np.uint64(63)), (state[:, 3] << np.uint64(1)) | 1)
        mult = _words128([_PCG_MULT])[0]
        # srandom: state = 0 -> step -> += initstate -> step
        start = _plus(inc, (state[:, 0], state[:, 1]))
        start = _plus(_times(*start, mult), inc)
        powers, sums, power, total = [], [], 1, 0
        for _ in range(length):
            total = (total * _PCG_MULT + 1) & ((1 << 128) - 1)
            power = (power * _PCG_MULT) & ((1 << 128) - 1)
            powers.append(power)
            sums.append(total)
        steps = _words128(powers)[:, None, :]  # (length, 1, 2)
        offsets = _words128(sums)[:, None, :]
        high, low = _plus(_times(start[0], start[1], steps), _times(inc[0], inc[1], offsets))  # (length, N)
        mixed = high ^ low
        rotate = high >> np.uint64(58)
        raw = (mixed >> rotate) | (mixed << ((np.uint64(64) - rotate) & np.uint64(63)))
    return np.ascontiguousarray(raw.T)
