"""FairGRPOAdvantage against an independent, slow statement of the paper, and exactness of its latent groups.

`PaperFairGRPO` below follows section 3 operation by operation with plain Python loops: it keeps every
prompt it has seen (as the authors do) and recomputes every statistic from that history at each call.
It shares no code with the estimator (only `numpy`), so agreement on random streams, with unlabeled
prompts, NaN rewards and each variant, checks the estimator's running sums, windows, pools and clusters.

Its k-means is brute force over every partition of the distinct reward vectors, which is also how the
estimator's exact clustering of 0/1 rewards is checked (`test_contiguous_splits_are_the_kmeans_optimum`).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fair_trl.advantages import FairGRPOAdvantage
from fair_trl.advantages.clustering import exact_binary_kmeans, sorted_binary_points, weighted_kmeans

# ------------------------------------------------------------------------------------ the reference


def partitions(m: int, k: int):
    """Every partition of m points into exactly k non-empty clusters, as label vectors in first-appearance form."""
    for labels in itertools.product(range(k), repeat=m):
        if set(labels) == set(range(k)) and all(labels.index(c) < labels.index(c + 1) for c in range(k - 1)):
            yield labels


def brute_force_kmeans(points: np.ndarray, weights: np.ndarray, k: int) -> tuple[float, tuple[int, ...]]:
    """The least weighted inertia over every partition into k clusters, and that partition.

    Of equally good partitions (within rounding) the one whose label vector is largest, which for runs
    in order is the one with the earliest cuts (the estimator's documented tie rule).
    """
    scored = []
    for labels in partitions(len(points), k):
        inertia = 0.0
        for c in range(k):
            members = [i for i, label in enumerate(labels) if label == c]
            centre = sum(weights[i] * points[i] for i in members) / sum(weights[i] for i in members)
            inertia += sum(weights[i] * float(((points[i] - centre) ** 2).sum()) for i in members)
        scored.append((inertia, labels))
    best = min(inertia for inertia, _ in scored)
    return best, max(labels for inertia, labels in scored if math.isclose(inertia, best, rel_tol=1e-9, abs_tol=1e-9))


def elbow(inertias: list[float], threshold: float) -> int:
    """README: add a cluster while it removes >= threshold of the previous drop (the first drop: k = 1's inertia)."""
    k, previous = 1, inertias[0]
    while k < len(inertias) and previous > 0 and inertias[k - 1] - inertias[k] >= threshold * previous:
        previous = inertias[k - 1] - inertias[k]
        k += 1
    return k


def features(row: np.ndarray, dim: int) -> np.ndarray:
    """A prompt's rollout rewards, sorted, at dim quantile levels over its scored rollouts."""
    return np.quantile(row[~np.isnan(row)], np.linspace(0, 1, dim))


class PaperFairGRPO:
    """Section 3, one prompt at a time, from the full history of prompts."""

    def __init__(self, use_demographics=True, pool_size=None, reward_floor=0.0, max_weight_ratio=None,
                 window=None, reward_min=0.0, max_k=3, threshold=0.1, eps=1e-6):  # fmt: skip
        self.use_demographics, self.pool_size, self.window = use_demographics, pool_size, window
        self.floor, self.cap, self.reward_min = reward_floor, max_weight_ratio, reward_min
        self.max_k, self.threshold, self.eps = max_k, threshold, eps
        self.calls = []  # per call: its scored prompts, (domain, group or None, rewards)
        self.dim = None

    def temperature(self, rewards_of_prompts: list[np.ndarray]) -> float:
        """Eq. 1: sqrt(number of prompts) * (mean of all their scored rewards - reward_min), floored."""
        rewards = [x for row in rewards_of_prompts for x in row if not np.isnan(x)]
        mean = sum(rewards) / len(rewards)
        return math.sqrt(len(rewards_of_prompts)) * max(mean - self.reward_min, self.floor)

    def latent_group(self, domain: str, row: np.ndarray, counted: list) -> tuple[float, float]:
        """(ii): the prompt's cluster among the domain's unlabeled prompts: its N and mean reward."""
        pool = []  # every unlabeled prompt of the domain, each call's in sorted order (the last pool_size)
        for call in self.calls:
            mine = [features(r, self.dim) for d, g, r in call if d == domain and g is None]
            pool += sorted(mine, key=tuple)
        pool = pool[-self.pool_size :] if self.pool_size else pool
        distinct = sorted({tuple(x) for x in pool})
        points = np.array(distinct)
        weights = np.array([sum(tuple(x) == p for x in pool) for p in distinct], dtype=float)
        fits = [brute_force_kmeans(points, weights, k) for k in range(1, min(self.max_k, len(points)) + 1)]
        _, labels = fits[elbow([inertia for inertia, _ in fits], self.threshold) - 1]
        centres = [
            sum(weights[i] * points[i] for i in range(len(points)) if labels[i] == c)
            / sum(weights[i] for i in range(len(points)) if labels[i] == c)
            for c in range(max(labels) + 1)
        ]
        nearest = [int(np.argmin([((x - c) ** 2).sum() for c in centres])) for x in pool]
        mine = int(np.argmin([((features(row, self.dim) - c) ** 2).sum() for c in centres]))
        unlabeled_counted = sum(1 for d, g, _ in counted if d == domain and g is None)
        n = nearest.count(mine) / len(pool) * unlabeled_counted
        return n, float(np.mean(centres[mine]))

    def __call__(self, rewards: np.ndarray, domains: list[str], groups: list) -> np.ndarray:
        rewards = np.where(np.isfinite(rewards), rewards, np.nan)
        self.dim = self.dim or rewards.shape[1]
        groups = groups if self.use_demographics else [None] * len(rewards)
        batch = list(zip(domains, groups, rewards, strict=True))
        self.calls.append([(d, g, r) for d, g, r in batch if (~np.isnan(r)).any()])
        counted = [p for call in self.calls[-self.window if self.window else 0 :] for p in call]

        s, divisors = [], []
        for d, g, r in batch:
            scored = r[~np.isnan(r)]
            if len(scored) < 2 or scored.min() == scored.max():
                s.append(np.zeros(len(r)))  # (i) no signal
            else:
                std = math.sqrt(sum((x - scored.mean()) ** 2 for x in scored) / (len(scored) - 1))
                s.append(np.where(np.isnan(r), 0.0, (r - scored.mean()) / (std + 1e-6)))
            if not len(scored):
                divisors.append(None)
                continue
            t_domain = self.temperature([x for dd, _, x in counted if dd == d])
            if g is not None:
                t_group = self.temperature([x for dd, gg, x in counted if (dd, gg) == (d, g)])
            else:
                n, mean = self.latent_group(d, r, counted)
                t_group = math.sqrt(n) * max(mean - self.reward_min, self.floor)
            divisors.append(max(t_domain * t_group, self.eps))  # eq. 2
        largest = max(x for x in divisors if x is not None)  # the lightest weight's
        if self.cap:
            divisors = [None if x is None else max(x, largest / self.cap) for x in divisors]
        scaled = [si / x if x is not None else si for si, x in zip(s, divisors, strict=True)]
        values = [
            v for si, r in zip(scaled, rewards, strict=True) for v, ok in zip(si, ~np.isnan(r), strict=True) if ok
        ]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return np.array(scaled) / std if std > 0 else np.zeros_like(rewards)


# ------------------------------------------------------------------------------------ streams


def stream(seed: int, steps: int, prompts: int, g: int, nan: float = 0.0, graded: bool = False, low: float = 0.0):
    """Random batches: 3 domains, 3 groups and unlabeled prompts, 0/1 (or graded) rewards, some NaN."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        skill = rng.uniform(0.1, 0.9, prompts)
        if graded:
            rewards = rng.choice([0.0, 0.5, 1.0], size=(prompts, g), p=[0.4, 0.2, 0.4])
        else:
            rewards = (rng.random((prompts, g)) < skill[:, None]).astype(float)
        rewards = low + (1.0 - low) * rewards  # low < 0: mixed-sign rewards in [low, 1]
        rewards[rng.random((prompts, g)) < nan] = np.nan
        domains = [str(x) for x in rng.choice(["chexpert", "isic", "vindr"], size=prompts, p=[0.5, 0.3, 0.2])]
        groups = [None if x == "none" else str(x) for x in rng.choice(["F", "M", "X", "none"], size=prompts)]
        yield rewards, domains, groups


def run_estimator(est: FairGRPOAdvantage, rewards: np.ndarray, domains: list, groups: list) -> np.ndarray:
    g = rewards.shape[1]
    out = est(torch.tensor(rewards.reshape(-1)), g, [d for d in domains for _ in range(g)],
              [x for x in groups for _ in range(g)])  # fmt: skip
    assert out.dtype == torch.float64
    return out.numpy().reshape(rewards.shape)


CASES = {
    "paper": ({}, {}, {}),
    "fair_grpo_nd": ({"use_demographics": False}, {"use_demographics": False}, {}),
    "nan rewards": ({}, {}, {"nan": 0.08}),
    "graded rewards": ({}, {}, {"graded": True}),
    "reward floor": ({"reward_floor": 0.3}, {"reward_floor": 0.3}, {}),
    "weight cap": ({"max_weight_ratio": 4.0}, {"max_weight_ratio": 4.0}, {}),
    "window": ({"stats_window": 3}, {"window": 3}, {"nan": 0.05}),
    "small pool": ({"cluster_pool_size": 7}, {"pool_size": 7}, {}),
    "mixed-sign rewards": ({"reward_min": -1.0}, {"reward_min": -1.0}, {"low": -1.0}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_estimator_matches_the_paper_step_by_step(case):
    kwargs, reference_kwargs, stream_kwargs = CASES[case]
    est, paper = FairGRPOAdvantage(**kwargs), PaperFairGRPO(**reference_kwargs)
    for rewards, domains, groups in stream(seed=len(case), steps=8, prompts=10, g=4, **stream_kwargs):
        expected = paper(rewards, domains, groups)
        np.testing.assert_allclose(run_estimator(est, rewards, domains, groups), expected, rtol=1e-9, atol=1e-12)
    assert est.unlabeled_seen  # the streams did exercise latent groups


def test_contiguous_splits_are_the_kmeans_optimum():
    """Exact clustering of sorted 0/1 vectors: the best contiguous split is the best of all partitions."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        dim = int(rng.integers(1, 6))
        counts = rng.integers(0, 6, size=dim + 1) * (rng.random(dim + 1) < 0.8)
        if not counts.any():
            continue
        present = np.flatnonzero(counts)
        points = sorted_binary_points(dim)[present]
        fits = exact_binary_kmeans(counts, dim, max_k=3)
        assert len(fits) == min(3, len(present))
        for k, (centres, inertia) in enumerate(fits, start=1):
            best, labels = brute_force_kmeans(points, counts[present].astype(float), k)
            assert inertia == pytest.approx(best, rel=1e-12, abs=1e-12), (trial, k)
            expected = [points[np.array(labels) == c].T @ counts[present][np.array(labels) == c] for c in range(k)]
            expected = np.array(expected) / np.bincount(labels, weights=counts[present])[:, None]
            np.testing.assert_allclose(centres, expected, rtol=1e-12, atol=1e-12)


def test_permuting_the_prompts_of_a_batch_permutes_the_advantages_and_nothing_else():
    rng = np.random.default_rng(3)
    for kwargs in ({}, {"use_demographics": False, "cluster_pool_size": 20}):
        a, b = FairGRPOAdvantage(**kwargs), FairGRPOAdvantage(**kwargs)
        for rewards, domains, groups in stream(seed=5, steps=4, prompts=16, g=5, nan=0.05):
            order = rng.permutation(len(rewards))
            expected = run_estimator(a, rewards, domains, groups)[order]
            got = run_estimator(b, rewards[order], [domains[i] for i in order], [groups[i] for i in order])
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
            for key in ("weight", "group_weight"):
                assert b.last_info[key] == pytest.approx(a.last_info[key], rel=1e-12)
            assert b.last_info["num_clusters"] == a.last_info["num_clusters"]
            assert b.state_dict() == a.state_dict()  # 0/1 and NaN rewards: every sum is a whole number


def test_mixed_sign_rewards_keep_every_domain_weighted():
    """Issue 26: a domain whose mean reward is negative no longer swamps the others (T was clipped to 0)."""
    rewards = np.array([[-1.0, -1.0, -1.0, 1.0], [1.0, 0.0, 1.0, 1.0]])
    domains, groups = ["penalised", "plain"], ["F", "F"]
    est = FairGRPOAdvantage(reward_min=-1.0)
    adv = run_estimator(est, rewards, domains, groups)
    weight = est.last_info["weight"]
    # T = sqrt(1) * (mean + 1): 0.5 and 1.75, so weights 1 / T^2 differ by 12x; clipped at 0 it was 5.6e5x.
    assert weight["plain"] / weight["penalised"] == pytest.approx(0.5**2 / 1.75**2)
    assert np.abs(adv[1]).max() > 0.01 * np.abs(adv[0]).max()
    with pytest.raises(ValueError, match=r"reward -1 .*domain 'penalised'.* below reward_min=0 .*fair_reward_min"):
        FairGRPOAdvantage()(torch.tensor(rewards.reshape(-1)), 4, ["penalised"] * 4 + ["plain"] * 4, ["F"] * 8)


def test_graded_rewards_cluster_the_same_way_from_any_prompt_order():
    rng = np.random.default_rng(1)
    rewards = rng.choice([0.0, 0.25, 0.5, 1.0], size=(40, 4))
    runs = []
    for order in (np.arange(40), rng.permutation(40)):
        est = FairGRPOAdvantage(use_demographics=False)
        out = run_estimator(est, rewards[order], ["d"] * 40, [None] * 40)
        runs.append((out[np.argsort(order)], est.last_info["num_clusters"]))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-12)
    assert runs[0][1] == runs[1][1] > 1


def test_graded_kmeans_nearly_always_finds_the_optimum_and_repeats_with_its_seed():
    """Lloyd's from 10 k-means++ starts is a local optimum: on pools a brute force can check it finds the
    best partition in nearly every case, is never far from it, and gives the same fit for the same seed."""
    rng = np.random.default_rng(7)
    optimal = checked = 0
    for trial in range(100):
        points = np.unique(rng.choice([0.0, 0.25, 0.5, 1.0], size=(int(rng.integers(2, 8)), 3)), axis=0)
        weights = rng.integers(1, 6, size=len(points)).astype(float)
        fits = weighted_kmeans(points, weights, max_k=3, seed=trial)
        assert len(fits) == min(3, len(points))
        for k, (centres, inertia) in enumerate(fits, start=1):
            best = brute_force_kmeans(points, weights, k)[0]
            assert centres.shape == (k, 3)
            assert best * (1 - 1e-9) - 1e-12 <= inertia <= 1.25 * best + 1e-12, (trial, k)
            if k == 1:
                assert inertia == pytest.approx(best, rel=1e-12, abs=1e-12)  # the weighted mean, exactly
            else:
                checked += 1
                optimal += inertia <= best * (1 + 1e-9) + 1e-12
        again = weighted_kmeans(points, weights, max_k=3, seed=trial)
        for (c1, i1), (c2, i2) in zip(fits, again, strict=True):
            np.testing.assert_array_equal(c1, c2)
            assert i1 == i2
    assert optimal >= 0.95 * checked, (optimal, checked)


def test_reward_min_none_measures_from_the_lowest_reward_seen():
    """reward_min=None (the config's default): 0 while every reward is >= 0, as in the paper; once rewards fall
    below 0 (a reward model's scores), each step is the paper's with the floor at the lowest reward seen so far."""
    adaptive, paper = FairGRPOAdvantage(reward_min=None), PaperFairGRPO()
    for rewards, domains, groups in stream(seed=2, steps=4, prompts=10, g=4, nan=0.05):
        np.testing.assert_allclose(run_estimator(adaptive, rewards, domains, groups), paper(rewards, domains, groups),
                                   rtol=1e-9, atol=1e-12)  # fmt: skip
    assert adaptive.lowest_reward == 0.0

    batches = [next(stream(seed=seed, steps=1, prompts=10, g=4, low=low))
               for seed, low in enumerate([-0.2, -0.7, -0.5, -1.0])]  # fmt: skip
    adaptive = FairGRPOAdvantage(reward_min=None)
    for step, batch in enumerate(batches):
        got = run_estimator(adaptive, *batch)
        lowest = min(float(np.nanmin(rewards)) for rewards, _, _ in batches[: step + 1])
        assert adaptive.lowest_reward == lowest == [-0.2, -0.7, -0.7, -1.0][step]
        # The running sums do not depend on the floor: a fixed floor at `lowest` replaying every batch agrees.
        replay = PaperFairGRPO(reward_min=lowest)
        for earlier in batches[:step]:
            replay(*earlier)
        np.testing.assert_allclose(got, replay(*batch), rtol=1e-9, atol=1e-12)
    resumed = FairGRPOAdvantage(reward_min=None)
    resumed.load_state_dict(adaptive.state_dict())
    assert resumed.lowest_reward == -1.0 and resumed.measured_from == -1.0
