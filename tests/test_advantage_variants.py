"""FairGRPO's optional variants (reward floor, weight-ratio cap, recent window) and the weighted sampler."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import per_completion

from fair_trl.advantages import REGISTRY, FairGRPOAdvantage, temperature
from fair_trl.config import FairGRPOConfig
from fair_trl.sampling import BalancedRepeatSampler, column_weights


def two_group_batch(low_rewards):
    """Prompt A in group "rich" (rewards [1, 0, 1, 1]), prompt B in group "poor" with `low_rewards`."""
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, *low_rewards], dtype=torch.float64)
    return rewards, per_completion(["d", "d"], 4), per_completion(["rich", "poor"], 4)


def weight_ratio(adv, low_rewards):
    """|A| per unit of normalised score, poor prompt over rich prompt (the scale each got)."""

    def s(r):
        r = np.asarray(r)
        return (r - r.mean()) / (r.std(ddof=1) + 1e-6)

    rich = adv[0].item() / s([1.0, 0.0, 1.0, 1.0])[0]
    poor = adv[4].item() / s(low_rewards)[0]
    return poor / rich


def test_temperature_floor_raises_only_low_means():
    assert temperature(4, 0.1) == pytest.approx(0.2)
    assert temperature(4, 0.1, reward_floor=0.3) == pytest.approx(0.6)
    assert temperature(4, 0.8, reward_floor=0.3) == pytest.approx(1.6)
    assert temperature(4, -0.5, reward_floor=0.0) == 0.0


def test_reward_floor_bounds_the_weight_of_a_failing_group():
    low = [1.0, 0.0, 0.0, 0.0]  # mean 0.25: T_poor = 0.25 unfloored, 0.4 with floor 0.4
    rewards, domains, groups = two_group_batch(low)
    paper = weight_ratio(FairGRPOAdvantage()(rewards, 4, domains, groups), low)
    floored = weight_ratio(FairGRPOAdvantage(reward_floor=0.4)(rewards, 4, domains, groups), low)
    # Same domain, so T_d cancels; the ratio is T_rich / T_poor = 0.75 / 0.25 vs 0.75 / 0.4.
    assert paper == pytest.approx(0.75 / 0.25, rel=1e-9)
    assert floored == pytest.approx(0.75 / 0.4, rel=1e-9)


def test_weight_ratio_cap_limits_the_heaviest_prompt():
    low = [1.0, 0.0, 0.0, 0.0]
    rewards, domains, groups = two_group_batch(low)
    assert weight_ratio(FairGRPOAdvantage()(rewards, 4, domains, groups), low) > 2.5
    capped = FairGRPOAdvantage(max_weight_ratio=2.0)
    adv = capped(rewards, 4, domains, groups)
    assert weight_ratio(adv, low) == pytest.approx(2.0, rel=1e-9)
    assert np.std(adv.numpy(), ddof=1) == pytest.approx(1.0)  # still renormalised by the batch std
    assert capped.last_info["group_weight"]["poor"] / capped.last_info["group_weight"]["rich"] == pytest.approx(2.0)


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        rewards = torch.tensor(rng.integers(0, 2, 24), dtype=torch.float64)
        domains = per_completion(rng.choice(["x", "y"], 6).tolist(), 4)
        groups = per_completion(rng.choice(["g1", "g2", None], 6).tolist(), 4)
        yield rewards, domains, groups


def test_window_statistics_equal_a_fresh_estimator_fed_only_the_window():
    windowed = FairGRPOAdvantage(stats_window=2)
    fresh = FairGRPOAdvantage()
    data = list(batches(5))
    for i, (rewards, domains, groups) in enumerate(data):
        windowed(rewards, 4, domains, groups)
        if i >= 3:
            fresh(rewards, 4, domains, groups)
    assert windowed.domain_stats == fresh.domain_stats
    assert windowed.group_stats == fresh.group_stats
    assert windowed.unlabeled_seen == fresh.unlabeled_seen
    assert len(windowed.history) == 2
    cumulative = FairGRPOAdvantage()
    for rewards, domains, groups in data:
        cumulative(rewards, 4, domains, groups)
    assert sum(s.prompts for s in cumulative.domain_stats.values()) == 30
    assert sum(s.prompts for s in windowed.domain_stats.values()) == 12


def test_window_state_round_trips_through_json():
    data = list(batches(6, seed=1))
    original = FairGRPOAdvantage(stats_window=3)
    for rewards, domains, groups in data[:4]:
        original(rewards, 4, domains, groups)
    resumed = FairGRPOAdvantage(stats_window=3)
    resumed.load_state_dict(json.loads(json.dumps(original.state_dict())))
    for rewards, domains, groups in data[4:]:
        assert torch.equal(original(rewards, 4, domains, groups), resumed(rewards, 4, domains, groups))
    assert original.state_dict() == resumed.state_dict()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reward_floor": -0.1}, "reward_floor"),
        ({"reward_floor": 1.5}, "reward_floor"),
        ({"max_weight_ratio": 0.5}, "max_weight_ratio"),
        ({"stats_window": 0}, "stats_window"),
    ],
)
def test_bad_variant_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FairGRPOAdvantage(**kwargs)


def test_config_fields_reach_the_estimator(tmp_path):
    config = FairGRPOConfig(
        str(tmp_path), use_cpu=True, fair_reward_floor=0.3, fair_max_weight_ratio=4.0, fair_stats_window=20
    )
    estimator = REGISTRY[config.advantage_estimator].factory(config)
    assert (estimator.reward_floor, estimator.max_weight_ratio, estimator.stats_window) == (0.3, 4.0, 20)
    default = FairGRPOConfig(str(tmp_path), use_cpu=True)
    assert REGISTRY[default.advantage_estimator].factory(default).stats_window is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fair_reward_floor": 2.0}, "fair_reward_floor"),
        ({"fair_max_weight_ratio": 0.0}, "fair_max_weight_ratio"),
        ({"fair_stats_window": 0}, "fair_stats_window"),
        ({"balanced_sampling": True, "sampling_weight_column": "w"}, "set only one"),
    ],
)
def test_config_refuses_bad_variants(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FairGRPOConfig(str(tmp_path), use_cpu=True, **kwargs)


def test_column_weights_normalise_and_name_bad_rows():
    from datasets import Dataset

    ds = Dataset.from_dict({"w": [1.0, 3.0, 0.0, 4.0]})
    np.testing.assert_allclose(column_weights(ds, "w"), [0.125, 0.375, 0.0, 0.5])
    with pytest.raises(ValueError, match="'missing' is not a dataset column"):
        column_weights(ds, "missing")
    with pytest.raises(ValueError, match="row 1 has -2.0"):
        column_weights(Dataset.from_dict({"w": [1.0, -2.0]}), "w")
    with pytest.raises(ValueError, match="row 0 has nan"):
        column_weights(Dataset.from_dict({"w": [None, 1.0]}), "w")
    with pytest.raises(ValueError, match="no positive weight"):
        column_weights(Dataset.from_dict({"w": [0.0, 0.0]}), "w")


def test_weighted_sampler_draws_in_proportion_to_the_column():
    weights = np.array([0.0, 1.0, 3.0, 0.0])
    sampler = BalancedRepeatSampler(
        weights / weights.sum(), data_source=list(range(4)), mini_repeat_count=1, batch_size=1, repeat_count=1,
        shuffle=True, seed=0,
    )  # fmt: skip
    draws = [i for _ in range(500) for i in sampler]
    counts = np.bincount(draws, minlength=4)
    assert counts[0] == counts[3] == 0
    assert math.isclose(counts[2] / counts[1], 3.0, rel_tol=0.15)


def test_a_string_weight_column_is_refused_naming_the_column_and_row():
    from datasets import Dataset

    with pytest.raises(ValueError, match=r"sampling_weight_column 'w' must hold numbers; row 0 has '2' \(str\)"):
        column_weights(Dataset.from_dict({"w": ["2", "heavy"]}), "w")
