"""`pcg64_draws` is numpy's own generator, written out on arrays: the same draws for any seed words."""

from __future__ import annotations

import numpy as np
import pytest

from fair_trl.advantages.streams import Drawn, as_uniforms, pcg64_draws, uniform_draws


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 9])
def test_pcg64_draws_equal_numpys_generator(width):
    rng = np.random.default_rng(width)
    words = rng.integers(0, 2**32, (64, width), dtype=np.uint64).astype(np.uint32)
    words[0] = 0  # all-zero words, and the largest
    words[1] = 2**32 - 1
    draws = pcg64_draws(words, 20)
    assert draws.dtype == np.uint64 and draws.shape == (64, 20)
    for row, drawn in zip(words, draws, strict=True):
        np.testing.assert_array_equal(drawn, np.random.PCG64(row).random_raw(20))
        # and so default_rng(seed).random(), which the k-means++ seeding replays
        np.testing.assert_array_equal(as_uniforms(drawn), np.random.default_rng(row).random(20))


def test_uniform_draws_take_what_a_drawn_seed_holds_and_draw_the_rest():
    seed = [7, 123, 2**31]
    ref = np.random.default_rng(np.array(seed, dtype=np.uint32)).random(16)
    short = Drawn(tuple(seed), ref[:4])
    np.testing.assert_array_equal(uniform_draws(short, 3), ref[:3])
    np.testing.assert_array_equal(uniform_draws(short, 16), ref)  # more than it holds: drawn from its seed
    np.testing.assert_array_equal(uniform_draws(seed, 16), ref)
    np.testing.assert_array_equal(uniform_draws(5, 8), np.random.default_rng(5).random(8))
    big = [2**40, 3]  # a word too large for the uint32 shortcut
    np.testing.assert_array_equal(uniform_draws(big, 8), np.random.default_rng(big).random(8))
