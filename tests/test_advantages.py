"""The advantage estimators against the paper's equations, by hand, and at their edges."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import per_completion
from trl.trainer.utils import nanstd as trl_nanstd

from fair_trl.advantages import FairGRPOAdvantage, grpo, kmeans_elbow, rollout_features


def trl_reference(rewards, g, scale_rewards):
    """TRL 1.16's inline sum_then_normalize advantage code, restated with TRL's own nanstd."""
    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    if scale_rewards == "group":
        std = trl_nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    else:
        std = trl_nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale_rewards != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_grpo_is_bitwise_trl(scale_rewards):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(48, generator=gen)
    rewards[[3, 17, 18, 19]] = torch.nan  # one partly and one wholly unscorable prompt
    ours = grpo(rewards, 4, scale_rewards=scale_rewards)
    assert torch.equal(ours, trl_reference(rewards, 4, scale_rewards))
    assert torch.all(ours[16:20] == 0)


def test_fair_grpo_matches_hand_computation():
    # Three prompts, two rollouts each: A = (d1, g1) [1, 0], B = (d1, g2) [1, 1], C = (d2, g1) [0, 1].
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    est = FairGRPOAdvantage()
    adv = est(rewards, 2, per_completion(["d1", "d1", "d2"], 2), per_completion(["g1", "g2", "g1"], 2))

    s = 0.5 / (math.sqrt(0.5) + 1e-6)  # (i): |r - mean| / (unbiased std + eps) for A and C; B has std 0
    t_d1 = math.sqrt(2) * 0.75  # eq. 1: two prompts, rewards {1, 0, 1, 1}
    t_d2 = math.sqrt(1) * 0.5
    t_d1_g1 = math.sqrt(1) * 0.5
    t_d2_g1 = math.sqrt(1) * 0.5
    a = s / max(t_d1 * t_d1_g1, 1e-6)  # eq. 2
    c = s / max(t_d2 * t_d2_g1, 1e-6)
    scaled = np.array([a, -a, 0.0, 0.0, -c, c])
    expected = scaled / np.std(scaled, ddof=1)  # renormalisation by the batch std

    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-12)
    assert adv.dtype == torch.float64
    assert est.domain_stats["d1"].prompts == 2 and est.domain_stats["d1"].mean_reward == 0.75
    assert est.group_stats["d1"]["g2"].mean_reward == 1.0


def test_statistics_are_cumulative_running_sums():
    est = FairGRPOAdvantage()
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    for _ in range(3):
        est(rewards, 2, ["d"] * 4, ["a", "a", "b", "b"])
    assert est.domain_stats["d"].prompts == 6
    assert est.domain_stats["d"].reward_count == 12
    assert est.domain_stats["d"].reward_sum == 9.0
    assert est.group_stats["d"]["a"].prompts == 3
    # Running sums only: the state holds no per-step history.
    assert len(json.dumps(est.state_dict())) < 600


def test_rare_and_low_reward_groups_are_amplified():
    g = 4
    est = FairGRPOAdvantage()
    # 8 majority prompts that mostly succeed and 1 minority prompt that mostly fails, same spread.
    majority = [1.0, 1.0, 1.0, 0.0]
    minority = [1.0, 0.0, 0.0, 0.0]
    rewards = torch.tensor(majority * 8 + minority)
    adv = est(rewards, g, ["d"] * 36, ["maj"] * 32 + ["min"] * 4)
    grpo_adv = grpo(rewards, g)
    fair_ratio = adv[32:].abs().max() / adv[:4].abs().max()
    grpo_ratio = grpo_adv[32:].abs().max() / grpo_adv[:4].abs().max()
    assert fair_ratio > 2 * grpo_ratio
    assert est.last_info["weight"]["d"] > 0


def test_every_rollout_equal_gives_zero_advantages():
    est = FairGRPOAdvantage()
    adv = est(torch.ones(12), 4, ["d"] * 12, ["a"] * 12)
    assert torch.equal(adv, torch.zeros(12))
    assert est.last_info["batch_std"] == 0.0
    assert est.domain_stats["d"].prompts == 3  # still counted: they were scored


@pytest.mark.parametrize("groups", [["a"] * 8, [None] * 8])
def test_single_prompt_and_single_group_reduce_to_normalised_grpo(groups):
    # With one domain and one group every prompt gets the same divisor, which the batch std cancels.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    for g, n in ((8, 8), (4, 8)):
        est = FairGRPOAdvantage()
        adv = est(rewards[:n], g, ["d"] * n, groups[:n])
        s = grpo(rewards[:n], g, eps=1e-6)
        if groups[0] is None and g == 4:
            continue  # two unlabeled prompts may form two clusters: covered elsewhere
        np.testing.assert_allclose(adv.numpy(), (s / s.std()).numpy(), rtol=1e-9)


def test_group_with_zero_mean_reward_is_finite_and_leaves_others_normalised():
    est = FairGRPOAdvantage()
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    adv = est(rewards, 2, ["d"] * 6, ["zero", "zero", "a", "a", "b", "b"])
    assert torch.isfinite(adv).all()
    assert torch.equal(adv[:2], torch.zeros(2))
    # Both other groups have equal temperatures, so the four non-zero scores share one magnitude x
    # with 4 x^2 / 5 = 1 (unit std over all six, mean 0).
    np.testing.assert_allclose(adv[2:].abs().numpy(), math.sqrt(5 / 4), rtol=1e-6)
    assert adv.std(unbiased=True).item() == pytest.approx(1.0)


def test_nan_rewards_get_zero_and_stay_out_of_statistics():
    est = FairGRPOAdvantage()
    rewards = torch.tensor([1.0, float("nan"), 0.0, 1.0, float("nan"), float("nan"), float("nan"), float("nan")])
    adv = est(rewards, 4, ["d"] * 4 + ["e"] * 4, ["a"] * 8)
    assert torch.isfinite(adv).all()
    assert adv[1] == 0 and torch.equal(adv[4:], torch.zeros(4))
    assert est.domain_stats["d"].reward_count == 3 and est.domain_stats["d"].reward_sum == 2.0
    assert "e" not in est.domain_stats  # a wholly unscorable prompt is not a prompt seen
    # The scored three still carry the signal: mean-zero, unit std among themselves up to the NaN's 0.
    scored = adv[[0, 2, 3]]
    assert scored[0] > 0 and scored[1] < 0 and scored[2] > 0


def test_unlabeled_pool_smaller_than_k():
    est = FairGRPOAdvantage(max_clusters=3)
    adv = est(torch.tensor([1.0, 0.0, 0.0]), 3, ["d"] * 3, [None] * 3)
    assert torch.isfinite(adv).all() and adv[0] > 0
    assert est.last_info["num_clusters"] == 1
    assert len(est.pools["d"]) == 1


def test_unseen_domains_and_groups_are_added_on_the_fly():
    est = FairGRPOAdvantage()
    est(torch.tensor([1.0, 0.0]), 2, ["d1"] * 2, ["a"] * 2)
    odd = "c, with|odd=chars"
    adv = est(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2, ["d1", "d1", "new", "new"], ["b", "b", odd, odd])
    assert torch.isfinite(adv).all()
    assert set(est.domain_stats) == {"d1", "new"}
    assert set(est.group_stats["d1"]) == {"a", "b"}


def test_fair_grpo_nd_ignores_demographics():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    domains = ["d"] * 8
    nd_with = FairGRPOAdvantage(use_demographics=False)
    nd_without = FairGRPOAdvantage(use_demographics=False)
    a = nd_with(rewards, 2, domains, per_completion(["x", "y", "x", "y"], 2))
    b = nd_without(rewards, 2, domains, [None] * 8)
    assert torch.equal(a, b)
    assert nd_with.group_stats == {} and nd_with.unlabeled_seen["d"] == 4


def test_unlabeled_minority_cluster_is_amplified():
    g = 4
    # 20 unlabeled prompts: 18 easy (3 of 4 right), 2 hard (1 of 4 right).
    easy, hard = [1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]
    rewards = torch.tensor(easy * 18 + hard * 2)
    est = FairGRPOAdvantage()
    adv = est(rewards, g, ["d"] * 80, [None] * 80)
    assert est.last_info["num_clusters"] == 2
    assert adv[72:].abs().max() > 5 * adv[:4].abs().max()


def test_kmeans_elbow_choices():
    same = np.ones((10, 4))
    assert len(kmeans_elbow(same)[0]) == 1
    two = np.array([[0.0, 0.0]] * 10 + [[1.0, 1.0]] * 10)
    centres, labels = kmeans_elbow(two, max_k=3)
    assert len(centres) == 2
    assert len(set(labels[:10])) == 1 and labels[0] != labels[-1]
    assert len(kmeans_elbow(two, max_k=1)[0]) == 1


def test_rollout_features_are_order_free_and_handle_nan():
    rng = np.random.default_rng(0)
    r = rng.random((5, 6))
    shuffled = np.array([rng.permutation(row) for row in r])
    assert np.array_equal(rollout_features(r, 6), rollout_features(shuffled, 6))
    assert np.array_equal(rollout_features(r, 6), np.sort(r, axis=1))
    with_nan = np.array([[0.0, np.nan, 1.0, 1.0]])
    np.testing.assert_allclose(rollout_features(with_nan, 4), [[0.0, 2 / 3, 1.0, 1.0]])


def test_permuting_rollouts_permutes_advantages():
    rng = np.random.default_rng(1)
    g, p = 5, 12
    rewards = (rng.random((p, g)) < 0.5).astype(np.float64)
    domains = per_completion(["a", "b", "c"] * 4, g)
    groups = per_completion([None, "x", None, "y"] * 3, g)
    perm = np.stack([rng.permutation(g) for _ in range(p)])
    shuffled = np.take_along_axis(rewards, perm, axis=1)
    a = FairGRPOAdvantage()(torch.tensor(rewards.ravel()), g, domains, groups).numpy().reshape(p, g)
    b = FairGRPOAdvantage()(torch.tensor(shuffled.ravel()), g, domains, groups).numpy().reshape(p, g)
    np.testing.assert_allclose(np.take_along_axis(a, perm, axis=1), b, rtol=1e-12)


def test_pool_is_bounded_and_state_stops_growing():
    rng = np.random.default_rng(2)
    est = FairGRPOAdvantage(cluster_pool_size=50)
    sizes = []
    for _ in range(40):
        rewards = torch.tensor((rng.random(80) < 0.5).astype(np.float32))
        est(rewards, 4, ["d"] * 80, per_completion([None] * 10 + ["a"] * 10, 4))
        sizes.append(len(json.dumps(est.state_dict())))
    assert len(est.pools["d"]) == 50
    assert est.unlabeled_seen["d"] == 400
    assert max(sizes[10:]) - min(sizes[10:]) < 200  # only digits of the counters change


def test_state_round_trips_through_json():
    rng = np.random.default_rng(3)
    groups = per_completion([None, "sex=F|age=a1", "sex=M", None], 4)
    domains = per_completion(["chexpert", "chexpert", "ham", "ham"], 4)
    batches = [torch.tensor((rng.random(16) < 0.6).astype(np.float32)) for _ in range(5)]
    a = FairGRPOAdvantage()
    for batch in batches[:3]:
        a(batch, 4, domains, groups)
    b = FairGRPOAdvantage()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict()
    for batch in batches[3:]:
        assert torch.equal(a(batch, 4, domains, groups), b(batch, 4, domains, groups))
    assert a.state_dict() == b.state_dict()


def test_bad_inputs_name_the_problem():
    est = FairGRPOAdvantage()
    with pytest.raises(ValueError, match="domains has 3 entries"):
        est(torch.zeros(4), 2, ["d"] * 3, ["a"] * 4)
    with pytest.raises(ValueError, match="groups differ within prompt 1"):
        est(torch.zeros(4), 2, ["d"] * 4, ["a", "a", "a", "b"])
    with pytest.raises(ValueError, match="not a multiple of num_generations=3"):
        est(torch.zeros(4), 3, ["d"] * 4, ["a"] * 4)
    with pytest.raises(ValueError, match="unsupported"):
        est.load_state_dict({"version": 99})
