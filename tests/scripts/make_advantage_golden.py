"""Write tests/data/fair_grpo_golden.npz: FairGRPOAdvantage's outputs on fixed batches, for the golden test.

    python tests/scripts/make_advantage_golden.py [OUT.npz]

The committed file was written by the estimator as it stood before it was vectorised (issue 15), so
`tests/test_advantages_golden.py` checks today's code against that frozen behaviour, not against a copy
of its code. Rerunning this script overwrites the reference with the current code's outputs: do it only
when a change of results is intended, and say so in the commit.

Each case is a run of 300 steps of the batches of `benchmarks/advantages.py` (7 domains, 8 sex x age
groups, 10% of prompts unlabeled, 0/1 rewards), at fewer prompts than the benchmark's 512 to keep the
file small, with one estimator configuration: the paper's FairGRPO, FairGRPO-ND, each variant, and two
harder mixes (NaN and infinite rewards, graded and 11-level rewards, a domain that appears late, small
pools, 16 rollouts). Stored per case: the inputs (reward levels and codes, domain and group codes), the
float64 advantages (each step's distinct values and a code per completion), `last_info` per step,
and `state_dict()` as JSON at step 150 (for loading a state saved by the old code) and at the end.
Not collected by pytest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from advantages import make_batches  # noqa: E402  (benchmarks/ is not a package)

from fair_trl.advantages import FairGRPOAdvantage  # noqa: E402

STEPS = 300
SAVE_STEP = 150

# Input sets: (kind, prompts, rollouts). Several cases share one, stored once.
INPUTS = {
    "benchmark": ("benchmark", 96, 10),
    "graded": ("graded", 64, 10),
    "levels": ("levels", 24, 16),
}
CASES = {
    # name: (estimator kwargs, input set)
    "fair_grpo": ({}, "benchmark"),
    "fair_grpo_nd": ({"use_demographics": False}, "benchmark"),
    "reward_floor": ({"reward_floor": 0.3}, "benchmark"),
    "max_weight_ratio": ({"max_weight_ratio": 4.0}, "benchmark"),
    "stats_window": ({"stats_window": 20}, "benchmark"),
    "nan_graded": ({"cluster_pool_size": 200, "seed": 7}, "graded"),
    "nd_variants_g16": (
        {"use_demographics": False, "reward_floor": 0.1, "max_weight_ratio": 8.0, "stats_window": 50},
        "levels",
    ),
}


def batches_for(kind: str, prompts: int, rollouts: int, seed: int = 0):
    """(rewards (P, G) float64, per-prompt domains, per-prompt groups) for each step."""
    rng = np.random.default_rng(1000 + seed)
    for step, (rewards, domains, groups) in enumerate(make_batches(STEPS, prompts, rollouts, seed=seed), start=1):
        r = rewards.numpy().astype(np.float64).reshape(prompts, rollouts)
        prompt_domains = list(domains[::rollouts])
        prompt_groups = list(groups[::rollouts])
        if kind == "graded":
            # Accuracy plus half a point for format, so rewards are 0, 0.5, 1 or 1.5.
            r = r + 0.5 * (rng.random(r.shape) < 0.7)
        elif kind == "levels":
            # Eleven levels in [0, 1], so a pool holds many distinct reward vectors.
            r = np.round(np.clip(r * 0.6 + rng.random(r.shape) * 0.4, 0, 1), 1)
        if kind != "benchmark":
            r[rng.random(r.shape) < 0.03] = np.nan  # unscorable completions
            r[rng.random(r.shape) < 0.005] = np.inf  # treated as unscorable too
            r[rng.random(prompts) < 0.02] = np.nan  # wholly unscorable prompts
            lonely = rng.random(prompts) < 0.01  # a single scored rollout
            r[lonely, 1:] = np.nan
            if step > SAVE_STEP:  # a domain first seen late, half of it unlabeled
                for q in rng.choice(prompts, size=3, replace=False):
                    prompt_domains[q] = "late_domain"
                    prompt_groups[q] = None if rng.random() < 0.5 else "sex=F|age=a2"
        yield r, prompt_domains, prompt_groups


def encode_inputs(kind: str, prompts: int, rollouts: int) -> tuple[list, dict[str, np.ndarray]]:
    steps = list(batches_for(kind, prompts, rollouts))
    domain_names = sorted({d for _, ds, _ in steps for d in ds})
    group_names = sorted({g for _, _, gs in steps for g in gs if g is not None})
    finite = np.unique(np.concatenate([r.ravel() for r, _, _ in steps]))
    levels = np.concatenate([finite[~np.isnan(finite)], [np.nan]])  # NaN last, once
    reward_codes = []
    for r, _, _ in steps:
        flat = r.ravel()
        code = np.where(np.isnan(flat), len(levels) - 1, np.searchsorted(levels[:-1], flat))
        assert np.array_equal(levels[code], flat, equal_nan=True)
        reward_codes.append(code.astype(np.uint8).reshape(prompts, rollouts))
    meta = {"kind": kind, "prompts": prompts, "rollouts": rollouts, "domains": domain_names, "groups": group_names}
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "reward_levels": levels,
        "reward_codes": np.stack(reward_codes),
        "domain_codes": np.array([[domain_names.index(d) for d in ds] for _, ds, _ in steps], dtype=np.int8),
        "group_codes": np.array(
            [[-1 if g is None else group_names.index(g) for g in gs] for _, _, gs in steps], dtype=np.int8
        ),
    }
    return steps, arrays


def run_case(kwargs: dict, steps: list, reward_codes: np.ndarray, n_levels: int) -> dict[str, np.ndarray]:
    """Outputs of one estimator over `steps`. A prompt's rollouts with equal rewards get equal advantages, so
    advantages are stored as each step's distinct values and, per (prompt, reward level), an index into them."""
    est = FairGRPOAdvantage(**kwargs)
    adv_values, adv_index = [], []
    info_keys: dict[str, set[str]] = {"weight": set(), "group_weight": set()}
    infos, states = [], {}
    for step, (r, domains, groups) in enumerate(steps, start=1):
        rollouts = r.shape[1]
        adv = est(
            torch.from_numpy(r.ravel().copy()),
            rollouts,
            [d for d in domains for _ in range(rollouts)],
            [g for g in groups for _ in range(rollouts)],
        ).numpy()
        assert adv.dtype == np.float64
        values, inverse = np.unique(adv, return_inverse=True)
        inverse = inverse.reshape(r.shape)
        assert len(values) < 255, "more distinct advantages in a step than a uint8 index holds"
        index = np.full((len(r), n_levels), 255, dtype=np.uint8)  # 255: the prompt has no such reward
        rows = np.repeat(np.arange(len(r)), rollouts)
        index[rows, reward_codes[step - 1].ravel()] = inverse.ravel()
        assert np.array_equal(values[index[rows, reward_codes[step - 1].ravel()]], adv)  # the encoding is lossless
        adv_values.append(values)
        adv_index.append(index)
        info = est.last_info
        infos.append(json.loads(json.dumps(info)))
        for key in info_keys:
            info_keys[key] |= set(info[key])
        if step in (SAVE_STEP, STEPS):
            states[step] = json.dumps(est.state_dict())
    weight_names = sorted(info_keys["weight"])
    group_weight_names = sorted(info_keys["group_weight"])
    weight = np.full((STEPS, len(weight_names)), np.nan)
    group_weight = np.full((STEPS, len(group_weight_names)), np.nan)
    for t, info in enumerate(infos):
        for j, name in enumerate(weight_names):
            weight[t, j] = info["weight"].get(name, np.nan)
        for j, name in enumerate(group_weight_names):
            group_weight[t, j] = info["group_weight"].get(name, np.nan)
    meta = {"kwargs": kwargs, "weight_keys": weight_names, "group_weight_keys": group_weight_names}
    return {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "adv_values": np.concatenate(adv_values),
        "adv_counts": np.array([len(v) for v in adv_values], dtype=np.int32),
        "adv_index": np.stack(adv_index),
        "weight": weight,
        "group_weight": group_weight,
        "batch_std": np.array([info["batch_std"] for info in infos]),
        "num_clusters": np.array([info["num_clusters"] for info in infos], dtype=np.int32),
        "state_saved": np.frombuffer(states[SAVE_STEP].encode(), dtype=np.uint8),
        "state_final": np.frombuffer(states[STEPS].encode(), dtype=np.uint8),
    }


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "data" / "fair_grpo_golden.npz"
    arrays = {}
    inputs = {}
    for name, (kind, prompts, rollouts) in INPUTS.items():
        steps, encoded = encode_inputs(kind, prompts, rollouts)
        inputs[name] = (steps, encoded)
        arrays.update({f"inputs/{name}/{key}": value for key, value in encoded.items()})
    for name, (kwargs, input_name) in CASES.items():
        steps, encoded = inputs[input_name]
        outputs = run_case(kwargs, steps, encoded["reward_codes"], len(encoded["reward_levels"]))
        arrays.update({f"cases/{name}/{key}": value for key, value in outputs.items()})
        print(f"{name}: inputs {input_name} {INPUTS[input_name][1:]}, {STEPS} steps", flush=True)
    index = {"steps": STEPS, "save_step": SAVE_STEP, "cases": {name: inputs for name, (_, inputs) in CASES.items()}}
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
