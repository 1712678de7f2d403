"""FairGRPOAdvantage against a frozen record of its own past outputs (tests/data/fair_grpo_golden.npz).

The record was written by tests/scripts/make_advantage_golden.py from the estimator as it stood before it
was vectorised: 300 steps of the benchmark's batches for the paper's FairGRPO, FairGRPO-ND and each
variant, plus NaN/inf, graded and 11-level rewards, a late new domain, small pools and 16 rollouts. Every
step's advantages must equal the record's to 1e-9, with the estimator's state round-tripped through JSON
on the way, and a state saved by the old code must load and carry on to the same outputs.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from fair_trl.advantages import FairGRPOAdvantage

GOLDEN = Path(__file__).resolve().parent / "data" / "fair_grpo_golden.npz"
TOLERANCE = 1e-9
ROUND_TRIPS = (100, 200)  # steps after which the state goes through JSON into a fresh estimator


@cache
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


def text(key: str):
    return json.loads(golden()[key].tobytes())


INDEX = text("index")
CASES = list(INDEX["cases"])


class Case:
    def __init__(self, name: str):
        data = golden()
        inputs = f"inputs/{INDEX['cases'][name]}/"
        prefix = f"cases/{name}/"
        self.kwargs = text(prefix + "meta")["kwargs"]
        self.meta = text(prefix + "meta")
        inputs_meta = text(inputs + "meta")
        self.rollouts = inputs_meta["rollouts"]
        levels = data[inputs + "reward_levels"]
        self.reward_codes = data[inputs + "reward_codes"]
        self.rewards = levels[self.reward_codes]
        domains = np.array(inputs_meta["domains"], dtype=object)
        groups = np.array([*inputs_meta["groups"], None], dtype=object)  # code -1 is "unknown"
        self.domains = [list(domains[c]) for c in data[inputs + "domain_codes"]]
        self.groups = [list(groups[c]) for c in data[inputs + "group_codes"]]
        values = np.split(data[prefix + "adv_values"], np.cumsum(data[prefix + "adv_counts"])[:-1])
        index = data[prefix + "adv_index"]
        self.advantages = []
        for step, step_values in enumerate(values):
            rows = np.repeat(np.arange(index.shape[1]), self.rollouts)
            self.advantages.append(step_values[index[step][rows, self.reward_codes[step].ravel()]])
        self.weight = data[prefix + "weight"]
        self.group_weight = data[prefix + "group_weight"]
        self.batch_std = data[prefix + "batch_std"]
        self.num_clusters = data[prefix + "num_clusters"]
        self.state_saved = text(prefix + "state_saved")
        self.state_final = text(prefix + "state_final")

    def call(self, est: FairGRPOAdvantage, step: int) -> np.ndarray:
        g = self.rollouts
        rewards = torch.from_numpy(self.rewards[step].ravel().copy())
        domains = [d for d in self.domains[step] for _ in range(g)]
        groups = [x for x in self.groups[step] for _ in range(g)]
        out = est(rewards, g, domains, groups)
        assert out.dtype == torch.float64
        return out.numpy()

    def check_step(self, est: FairGRPOAdvantage, step: int, adv: np.ndarray) -> None:
        expected = self.advantages[step]
        worst = np.abs(adv - expected).max()
        assert worst <= TOLERANCE, f"step {step + 1}: advantages differ from the record by {worst:.3g}"
        assert not adv[expected == 0].any(), f"step {step + 1}: an advantage the record has as 0 is not 0"
        info = est.last_info
        for key, table in (("weight", self.weight), ("group_weight", self.group_weight)):
            names = self.meta[f"{key}_keys"]
            want = {n: table[step, j] for j, n in enumerate(names) if not np.isnan(table[step, j])}
            assert info[key].keys() == want.keys(), f"step {step + 1}: last_info[{key!r}] keys"
            for name, value in want.items():
                assert info[key][name] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), (step + 1, key, name)
        assert info["batch_std"] == pytest.approx(self.batch_std[step], rel=TOLERANCE, abs=TOLERANCE)
        assert info["num_clusters"] == self.num_clusters[step], f"step {step + 1}: num_clusters"


def round_trip(est: FairGRPOAdvantage, kwargs: dict) -> FairGRPOAdvantage:
    fresh = FairGRPOAdvantage(**kwargs)
    fresh.load_state_dict(json.loads(json.dumps(est.state_dict())))
    return fresh


def assert_state_matches(got: dict, want: dict) -> None:
    for key in ("version", "step", "feature_dim", "unlabeled_seen", "pools"):
        assert got[key] == want[key], key
    assert len(got["history"]) == len(want["history"])
    for got_call, want_call in zip(got["history"], want["history"], strict=True):
        assert [(d, g, n) for d, g, _, n in got_call] == [(d, g, n) for d, g, _, n in want_call]
        assert [t for _, _, t, _ in got_call] == pytest.approx([t for _, _, t, _ in want_call], rel=TOLERANCE)
    for key in ("domain_stats", "group_stats"):
        flat_got = _flatten(got[key])
        flat_want = _flatten(want[key])
        assert flat_got.keys() == flat_want.keys(), key
        for name, stats in flat_want.items():
            mine = flat_got[name]
            assert (mine["prompts"], mine["reward_count"]) == (stats["prompts"], stats["reward_count"]), (key, name)
            assert mine["reward_sum"] == pytest.approx(stats["reward_sum"], rel=TOLERANCE, abs=TOLERANCE)


def _flatten(stats: dict) -> dict:
    if all("prompts" in v for v in stats.values()):
        return stats
    return {(d, g): s for d, groups in stats.items() for g, s in groups.items()}


def test_golden_record_covers_what_it_claims():
    cases = {name: Case(name) for name in CASES}
    assert INDEX["steps"] == 300 and all(len(c.advantages) == 300 for c in cases.values())
    kwargs = [c.kwargs for c in cases.values()]
    assert {} in kwargs and {"use_demographics": False} in kwargs
    for variant in ("reward_floor", "max_weight_ratio", "stats_window"):
        assert any(k.get(variant) is not None and set(k) == {variant} for k in kwargs), variant
    rewards = np.concatenate([c.rewards.ravel() for c in cases.values()])
    assert np.isnan(rewards).any() and np.isinf(rewards).any()
    assert any(None in groups for c in cases.values() for groups in c.groups)  # unlabeled prompts to cluster
    assert all(len(set(c.domains[0])) >= 5 for c in cases.values())
    assert any(c.num_clusters.max() > len(set(c.domains[0])) for c in cases.values())  # k > 1 somewhere


@pytest.mark.parametrize("name", CASES)
def test_advantages_match_the_record_through_state_round_trips(name):
    case = Case(name)
    est = FairGRPOAdvantage(**case.kwargs)
    for step in range(INDEX["steps"]):
        case.check_step(est, step, case.call(est, step))
        if step + 1 in ROUND_TRIPS:
            est = round_trip(est, case.kwargs)
    assert_state_matches(json.loads(json.dumps(est.state_dict())), case.state_final)


@pytest.mark.parametrize("name", CASES)
def test_a_state_saved_by_the_recorded_code_loads_and_carries_on(name):
    case = Case(name)
    est = FairGRPOAdvantage(**case.kwargs)
    est.load_state_dict(case.state_saved)
    for step in range(INDEX["save_step"], INDEX["steps"]):
        case.check_step(est, step, case.call(est, step))
    assert_state_matches(est.state_dict(), case.state_final)
