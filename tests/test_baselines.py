"""The paper's baselines: RLOO, REINFORCE++, Group DRO and Resampling, alone and inside the trainer."""

import json
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import RecordingTrainer, length_reward, text_dataset, trainer_config

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.advantages import grpo
from fair_trl.advantages.baselines import GroupDROAdvantage, reinforce_pp, rloo
from fair_trl.checkpoint_io import ESTIMATOR_STATE_FILE
from fair_trl.sampling import BalancedRepeatSampler, balanced_weights

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_rloo_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # Prompt 1: n = 4, sum 2, A = (4 r - 2) / 3; prompt 2: all equal, so 0.
    assert rloo(rewards, 4).tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])


def test_rloo_is_reward_minus_mean_of_the_others_and_skips_nan():
    rng = np.random.default_rng(0)
    rewards = torch.tensor(rng.random(12))
    out = rloo(rewards, 4)
    for i in range(12):
        block = range(4 * (i // 4), 4 * (i // 4) + 4)
        others = [rewards[j].item() for j in block if j != i]
        assert out[i].item() == pytest.approx(rewards[i].item() - np.mean(others))
    with_nan = rloo(torch.tensor([1.0, float("nan"), 0.0, 0.0, 1.0, float("nan"), float("nan"), float("nan")]), 4)
    # Three scored: (3 r - 1) / 2; the unscored one gets 0; a prompt with one scored completion gets 0.
    assert with_nan.tolist() == pytest.approx([1.0, 0.0, -0.5, -0.5, 0.0, 0.0, 0.0, 0.0])


def test_reinforce_pp_normalises_over_the_global_batch():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    out = reinforce_pp(rewards)
    expected = (rewards - rewards.mean()) / (rewards.std() + 1e-8)
    assert torch.allclose(out, expected)
    # Unlike GRPO, a prompt whose rollouts all agree still gets a non-zero advantage.
    assert torch.all(out[4:] > 0) and torch.all(grpo(rewards, 4)[4:] == 0)
    # Prompt boundaries do not matter: permuting the batch permutes the advantages.
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(reinforce_pp(rewards[perm]), out[perm])
    nan = reinforce_pp(torch.tensor([1.0, float("nan"), 0.0, 1.0]))
    assert nan[1] == 0 and torch.allclose(nan[[0, 2, 3]], reinforce_pp(torch.tensor([1.0, 0.0, 1.0])))
    assert torch.all(reinforce_pp(torch.ones(6)) == 0)


def dro_batch():
    # Four prompts x 2 rollouts: domain d, groups A (reward 1/2 on average) and B (reward 0 on average is worse).
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.5])
    domains = ["d"] * 8
    groups = ["A", "A", "A", "A", "B", "B", None, None]
    return rewards, domains, groups


def test_group_dro_first_step_by_hand():
    rewards, domains, groups = dro_batch()
    est = GroupDROAdvantage(step_size=1.0)
    out = est(rewards, 2, domains, groups)
    # log q: A -= 0.5, B -= 0.25, unknown -= 0.25; q = softmax over the three groups present.
    logits = np.array([-0.5, -0.25, -0.25])
    q = np.exp(logits) / np.exp(logits).sum()
    assert est.last_info["weight"] == pytest.approx({"d/A": q[0], "d/B": q[1], "d/unknown": q[2]})
    # Prompt weight q_g * P / n_g with P = 4 prompts, n_A = 2, n_B = n_unknown = 1.
    prompt_weight = torch.tensor([q[0] * 2, q[0] * 2, q[1] * 4, q[2] * 4], dtype=torch.float32)
    expected = grpo(rewards, 2) * prompt_weight.repeat_interleave(2)
    assert torch.allclose(out, expected)
    # The weights turn the batch into sum_g q_g * (group mean): prompt weights add up to P.
    assert prompt_weight.sum().item() == pytest.approx(4.0)


def test_group_dro_upweights_the_worse_group_over_steps_and_round_trips():
    rewards, domains, groups = dro_batch()
    est = GroupDROAdvantage(step_size=0.5)
    history = []
    for _ in range(5):
        est(rewards, 2, domains, groups)
        history.append(est.last_info["weight"]["d/B"] / est.last_info["weight"]["d/A"])
    assert all(b > a for a, b in zip(history, history[1:], strict=False))
    restored = GroupDROAdvantage(step_size=0.5)
    restored.load_state_dict(json.loads(json.dumps(est.state_dict())))
    assert torch.equal(restored(rewards, 2, domains, groups), est(rewards, 2, domains, groups))
    with pytest.raises(ValueError, match="step_size must be >= 0"):
        GroupDROAdvantage(step_size=-1)
    with pytest.raises(ValueError, match="groups differ within prompt 0"):
        est(rewards, 2, domains, ["A", "B"] + groups[2:])


def test_balanced_weights_equalise_cells():
    domains = ["x"] * 6 + ["y"] * 2
    groups = ["F"] * 5 + [None] + ["M", "M"]
    w = balanced_weights(domains, groups)
    cells = Counter()
    for d, g, p in zip(domains, groups, w, strict=True):
        cells[(d, g)] += p
    assert all(math.isclose(v, 1 / 3) for v in cells.values())
    with pytest.raises(ValueError, match="same length"):
        balanced_weights(["x"], [])


def test_balanced_sampler_keeps_trl_layout_and_balances_cells():
    domains = ["x"] * 90 + ["y"] * 10
    groups = ["F"] * 100
    sampler = BalancedRepeatSampler(
        balanced_weights(domains, groups), data_source=range(100), mini_repeat_count=3, batch_size=4, repeat_count=2,
        seed=5,
    )  # fmt: skip
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 100 // 4 * 4 * 3 * 2
    # Each index three times in a row; each chunk of 4 prompts twice.
    triples = [drawn[i : i + 3] for i in range(0, len(drawn), 3)]
    assert all(len(set(t)) == 1 for t in triples)
    prompts = [t[0] for t in triples]
    chunks = [prompts[i : i + 8] for i in range(0, len(prompts), 8)]
    assert all(c[:4] == c[4:] for c in chunks)
    # Same seed, same draw; y is 10% of rows but about half of the draws.
    assert drawn == list(BalancedRepeatSampler(balanced_weights(domains, groups), data_source=range(100),
                                               mini_repeat_count=3, batch_size=4, repeat_count=2, seed=5))  # fmt: skip
    many = BalancedRepeatSampler(
        balanced_weights(domains, groups), data_source=range(100), mini_repeat_count=1, batch_size=1, seed=0
    )
    share_y = np.mean([i >= 90 for _ in range(20) for i in many])
    assert 0.4 < share_y < 0.6


def test_weighted_draw_is_coupled_to_trls_order_of_the_same_seed():
    from fair_trl.sampling import EpochRepeatSampler

    n = 200
    weights = np.ones(n)
    weights[:20] = 6.0  # the first 10% of rows drawn six times as often
    weights /= weights.sum()
    layout = {"data_source": range(n), "mini_repeat_count": 1, "batch_size": 1}
    # Every position still draws row i with probability weights[i] (over many seeds).
    counts = np.zeros(n)
    shared = []
    for seed in range(300):
        weighted = list(BalancedRepeatSampler(weights, **layout, seed=seed))
        plain = list(EpochRepeatSampler(**layout, shuffle=True, seed=seed))
        counts += np.bincount(weighted, minlength=n)
        shared.append(np.mean(np.array(weighted) == np.array(plain)))
    share_heavy = counts[:20].sum() / counts.sum()
    assert share_heavy == pytest.approx(weights[:20].sum(), abs=0.01)
    # ... and keeps TRL's row at a position as often as a coupling can: sum_i min(1/n, w_i).
    assert np.mean(shared) == pytest.approx(np.minimum(1 / n, weights).sum(), abs=0.01)
    # Uniform weights are TRL's own order.
    assert list(BalancedRepeatSampler(np.ones(n) / n, **layout, seed=3)) == list(
        EpochRepeatSampler(**layout, shuffle=True, seed=3)
    )


def test_data_seed_sets_the_prompt_order_and_seed_the_rest(text_model_dir, tmp_path):
    data = text_dataset(n=40)

    def order(**seeds):
        args = FairGRPOConfig(**{**trainer_config(tmp_path), **seeds}, advantage_estimator="grpo")
        trainer = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=args, train_dataset=data)
        return list(trainer._get_train_sampler())

    assert order(seed=1, data_seed=7) == order(seed=2, data_seed=7) == order(seed=7)
    assert order(seed=1) != order(seed=2)


@pytest.mark.parametrize("estimator", ["rloo", "reinforce_pp", "group_dro"])
def test_baselines_train_through_the_seam(text_model_dir, tmp_path, estimator):
    trainer = RecordingTrainer(
        model=text_model_dir,
        reward_funcs=length_reward,
        args=FairGRPOConfig(**trainer_config(tmp_path), advantage_estimator=estimator),
        train_dataset=text_dataset(),
    )
    trainer.train()
    assert trainer.state.global_step == 3
    for (rewards, advantages), trained in zip(trainer.recorded, trainer.trained_on, strict=True):
        assert torch.equal(advantages, trained)
        if estimator == "rloo":
            assert torch.allclose(advantages, rloo(rewards, 4))
        elif estimator == "reinforce_pp":
            assert torch.allclose(advantages, reinforce_pp(rewards))
    logged = {k for entry in trainer.state.log_history for k in entry}
    if estimator == "group_dro":
        assert any(k.startswith("dro/weight/") for k in logged)
        assert trainer.estimator.step == 3 and trainer.fair_estimator is None


def test_group_dro_state_is_checkpointed(text_model_dir, tmp_path):
    settings = trainer_config(tmp_path, save_strategy="steps", save_steps=2)
    args = FairGRPOConfig(**settings, advantage_estimator="group_dro")
    trainer = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=args, train_dataset=text_dataset())
    trainer.train()
    saved = json.loads((tmp_path / "out" / "checkpoint-2" / ESTIMATOR_STATE_FILE).read_text())
    assert saved["step"] == 2 and saved["log_weights"]


def test_resampling_trainer_uses_the_balanced_sampler(text_model_dir, tmp_path):
    data = text_dataset(n=40)
    args = FairGRPOConfig(**trainer_config(tmp_path), advantage_estimator="grpo", balanced_sampling=True)
    trainer = FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=args, train_dataset=data)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, BalancedRepeatSampler)
    # Every (domain, group) cell gets the same total probability, however many rows it has.
    keys = trainer.group_keyer.keys(data.select_columns(["sex", "age"]).to_list(), list(data["dataset"]))
    cells = list(zip(data["dataset"], keys, strict=True))
    mass = Counter()
    for cell, weight in zip(cells, sampler.weights.tolist(), strict=True):
        mass[cell] += weight
    assert len(mass) > 2 and max(Counter(cells).values()) > min(Counter(cells).values())
    assert all(m == pytest.approx(1 / len(mass)) for m in mass.values())
    trainer.train()
    assert trainer.state.global_step == 3
