"""FairGRPO-guided sampling: prompts drawn by FairGRPO's weights of the running statistics, with any estimator."""

import os
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import trainer_config
from datasets import Dataset, IterableDataset
from trl.trainer.utils import RepeatSampler

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.advantages import FairGRPOAdvantage, temperature
from fair_trl.checkpoint_io import GUIDED_SAMPLING_STATE_FILE
from fair_trl.guided_sampling import GuidedSampling
from fair_trl.model_card import GUIDED_SAMPLER, method_name
from fair_trl.sampling import GuidedRepeatSampler, check_sampling

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LAYOUT = dict(mini_repeat_count=1, batch_size=10, repeat_count=1, seed=3)


def feed(guided: GuidedSampling, prompts: list[tuple[str, str | None, list[float]]]) -> None:
    """One scored generation batch: (domain, group, its rollouts' rewards) per prompt."""
    g = len(prompts[0][2])
    rewards = torch.tensor([r for _, _, rs in prompts for r in rs], dtype=torch.float64)
    domains = [d for d, _, _ in prompts for _ in range(g)]
    groups = [group for _, group, _ in prompts for _ in range(g)]
    guided.observe(rewards, g, domains, groups)


def own_guided(**estimator) -> GuidedSampling:
    return GuidedSampling(FairGRPOAdvantage(**estimator), owns_stats=True)


def shares(sampler: GuidedRepeatSampler, batches: range, cells: list) -> Counter:
    """How often each cell is drawn over `batches` (drawn by the weights the sampler has for each now)."""
    drawn = Counter()
    for j in batches:
        drawn.update(cells[i] for i in sampler.draw_batch(j, list(range(sampler.batch_size))))
    return drawn


CELLS = [("d", "F")] * 50 + [("d", "M")] * 50


def fed_sampler(batches: int, prompts: list) -> tuple[GuidedSampling, GuidedRepeatSampler]:
    """A sampler over CELLS whose own statistics have seen `batches` scored batches of `prompts`."""
    guided = own_guided()
    sampler = GuidedRepeatSampler(guided, CELLS, data_source=range(100), **LAYOUT)
    for _ in range(batches):
        feed(guided, prompts)
    return guided, sampler


def test_before_any_statistics_the_draw_is_trls_order_of_the_seed():
    sampler = GuidedRepeatSampler(own_guided(), CELLS, data_source=range(100), **{**LAYOUT, "repeat_count": 2})
    trl = RepeatSampler(range(100), mini_repeat_count=1, batch_size=10, repeat_count=2, seed=3)
    assert list(sampler) == list(trl)
    # The next epoch too (TRL's generator, advanced one draw per epoch).
    assert list(sampler) == list(trl)


def test_a_low_reward_group_is_drawn_more_once_its_statistics_show_it():
    guided, sampler = fed_sampler(3, [("d", "F", [0.0, 0.2]), ("d", "M", [0.8, 1.0])])
    weights = guided.weights_for(4, [("d", "F"), ("d", "M")])
    # Same N, rbar 0.1 against 0.9: F weighs 9 times M (the domain's temperature is common to both).
    assert weights[0] / weights[1] == pytest.approx(9.0)
    drawn = shares(sampler, range(4, 40), CELLS)
    assert drawn[("d", "F")] > 0.8 * sum(drawn.values())
    # Reproducible: a batch's draw depends on (seed, batch) and the weights only.
    assert sampler.draw_batch(7, []) == sampler.draw_batch(7, []) != sampler.draw_batch(8, [])


def test_equal_statistics_draw_every_row_alike():
    guided, sampler = fed_sampler(2, [("d", "F", [0.2, 0.6]), ("d", "M", [0.6, 0.2])])
    weights = guided.weights_for(3, [("d", "F"), ("d", "M")])
    assert weights[0] == weights[1]
    drawn = shares(sampler, range(3, 203), CELLS)
    assert 0.45 < drawn[("d", "F")] / sum(drawn.values()) < 0.55


def test_batch_j_draws_by_the_statistics_of_batches_before_j_minus_one():
    guided = own_guided()
    feed(guided, [("d", "F", [0.0, 0.2]), ("d", "M", [0.8, 1.0])])
    after_one = guided.weights_for(2, [("d", "F"), ("d", "M")])
    assert guided.weights_for(1, [("d", "F")]) is None  # batch 1 is drawn before batch 0 is scored
    feed(guided, [("d", "F", [0.9, 1.0]), ("d", "M", [0.9, 1.0])] * 4)
    # Batch 2 may be asked for after batch 1 was scored: it still draws by the weights after batch 0.
    assert np.array_equal(guided.weights_for(2, [("d", "F"), ("d", "M")]), after_one)
    assert not np.array_equal(guided.weights_for(3, [("d", "F"), ("d", "M")]), after_one)


def test_rows_of_unknown_group_are_their_domains_pooled_group_and_unseen_cells_the_largest_weight():
    guided = own_guided()
    feed(guided, [("d", "F", [0.8, 1.0]), ("d", "M", [0.8, 1.0]), ("d", None, [0.0, 0.2]), ("d", None, [0.2, 0.2])])
    cells = [("d", "F"), ("d", None), ("d", "X"), ("e", None)]
    weights = guided.weights_for(2, cells)
    # The unlabeled prompts as one group: N = 2, rbar = 0.15; the domain: N = 4, rbar = 0.525.
    expected = 1 / (temperature(4, 0.525) * temperature(2, 0.15))
    assert weights[1] == pytest.approx(expected)
    assert weights[1] > weights[0]
    # Cells with no statistics yet (a group or a domain never scored) draw as the heaviest cell seen.
    assert weights[2] == weights[3] == weights.max() == weights[1]


def test_without_demographics_every_row_weighs_as_its_domain():
    guided = own_guided(use_demographics=False)
    feed(guided, [("a", "F", [0.0, 0.2]), ("b", "M", [0.8, 1.0])])
    weights = guided.weights_for(2, [("a", "F"), ("a", "M"), ("b", "F")])
    # Each domain's prompts are its one pooled group: T_domain * T_group = T_domain ** 2, rbar 0.1 against 0.9.
    assert weights[0] == weights[1] == pytest.approx(81 * weights[2])


def test_state_round_trips():
    guided = own_guided()
    for rewards in ([0.0, 0.2], [0.4, 0.2], [1.0, 0.0]):
        feed(guided, [("d", "F", rewards), ("d", None, [0.8, 1.0])])
    restored = own_guided()
    restored.load_state_dict(guided.state_dict())
    assert restored.state_dict() == guided.state_dict()
    assert restored.scored == 3 and sorted(restored.snapshots) == [2, 3]
    for j in (3, 4):
        assert np.array_equal(restored.weights_for(j, CELLS[:1]), guided.weights_for(j, CELLS[:1]))


def test_refusals_name_the_settings(tmp_path):
    base = trainer_config(tmp_path)
    with pytest.raises(ValueError, match="balanced_sampling=True and guided_sampling=True each choose"):
        FairGRPOConfig(**base, guided_sampling=True, balanced_sampling=True)
    with pytest.raises(ValueError, match="sampling_weight_column='w' and guided_sampling=True each choose"):
        FairGRPOConfig(**base, guided_sampling=True, sampling_weight_column="w")
    config = FairGRPOConfig(**base, guided_sampling=True)
    stream = IterableDataset.from_generator(lambda: iter([{"prompt": "p"}]))
    with pytest.raises(ValueError, match="guided_sampling=True needs a map-style train_dataset"):
        check_sampling(stream, config)
    check_sampling(Dataset.from_dict({"prompt": ["p"]}), config)


# -- in the trainer --------------------------------------------------------------------------------


def two_group_dataset(n: int = 40) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"Classify case {i} : Normal or Pneumonia ?"}] for i in range(n)],
            "dataset": ["chexpert"] * n,
            "sex": ["F", "M"] * (n // 2),
            "row": list(range(n)),
        }
    )


def disfavours_f(completions, sex, **_):
    """The completion's length, scaled down 20 times for group F: the reward disfavours F."""
    lengths = [min(len(c if isinstance(c, str) else c[-1]["content"]), 40) / 40 for c in completions]
    return [(0.05 if s == "F" else 1.0) * (0.1 + 0.9 * x) for x, s in zip(lengths, sex, strict=True)]


class DrawRecordingTrainer(FairGRPOTrainer):
    """Keeps each training generation batch's rows (one per prompt) and the weights the sampler drew it by."""

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        self.weights_used = {}
        weights_for = self.guided_sampling.weights_for

        def recording(batch, cells):
            weights = weights_for(batch, cells)
            self.weights_used[batch] = None if weights is None else weights.tolist()
            return weights

        self.guided_sampling.weights_for = recording
        return sampler

    def _generate_and_score_completions(self, inputs):
        if self.model.training:
            self.drawn = getattr(self, "drawn", []) + [[row["row"] for row in inputs[:: self.num_generations]]]
        return super()._generate_and_score_completions(inputs)


def guided_trainer(model_dir, tmp_path, estimator, **overrides):
    args = FairGRPOConfig(
        **trainer_config(tmp_path, **overrides),
        advantage_estimator=estimator,
        guided_sampling=True,
        demographic_columns=["sex"],
    )
    return DrawRecordingTrainer(
        model=model_dir, reward_funcs=disfavours_f, args=args, train_dataset=two_group_dataset()
    )


@pytest.mark.parametrize("estimator", ["grpo", "fair_grpo"])
def test_trainer_draws_more_of_the_group_the_reward_disfavours(text_model_dir, tmp_path, estimator):
    trainer = guided_trainer(text_model_dir, tmp_path, estimator, max_steps=10)
    trainer.train()
    assert trainer.state.global_step == 10 and len(trainer.drawn) == 10
    assert isinstance(trainer._train_sampler, GuidedRepeatSampler)
    guided = trainer.guided_sampling
    assert guided.owns_stats == (estimator == "grpo") and guided.scored == 10
    if estimator == "fair_grpo":
        assert guided.stats is trainer.estimator
    stats = guided.stats.group_stats["chexpert"]
    assert stats["sex=F"].mean_reward < stats["sex=M"].mean_reward
    weights = guided.weights_for(11, [("chexpert", "sex=F"), ("chexpert", "sex=M")])
    assert weights[0] > 2 * weights[1]
    # The model card names the sampler.
    assert trainer.model_card_record().sampler == GUIDED_SAMPLER
    assert method_name(estimator, GUIDED_SAMPLER)[0].endswith(" + FairGRPO-guided sampling")
    # Half the rows are F; once statistics exist (batch 2 on), most draws are.
    guided_draws = [row for batch in trainer.drawn[2:] for row in batch]
    assert sum(row % 2 == 0 for row in guided_draws) > 0.65 * len(guided_draws)


@pytest.mark.parametrize("estimator", ["grpo", "fair_grpo"])
def test_a_resumed_run_draws_what_the_unbroken_run_did(text_model_dir, tmp_path, estimator):
    saving = dict(max_steps=4, save_strategy="steps", save_steps=2)
    unbroken = guided_trainer(text_model_dir, tmp_path / "unbroken", estimator, **saving)
    unbroken.train()
    checkpoint = tmp_path / "unbroken" / "out" / "checkpoint-2"
    assert (checkpoint / GUIDED_SAMPLING_STATE_FILE).exists()
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed_dir / "out" / "checkpoint-2")
    resumed = guided_trainer(text_model_dir, resumed_dir, estimator, **saving)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    # Steps 3 and 4 (generation batches 2 and 3) are drawn by the same weights as the unbroken run's, and
    # the same prompts.
    assert [resumed.weights_used[j] for j in (2, 3)] == [unbroken.weights_used[j] for j in (2, 3)]
    assert unbroken.weights_used[2] is not None and unbroken.weights_used[2] != unbroken.weights_used[3]
    assert resumed.drawn == unbroken.drawn[2:]
    assert resumed.guided_sampling.state_dict() == unbroken.guided_sampling.state_dict()
    assert resumed.guided_sampling.stats.state_dict() == unbroken.guided_sampling.stats.state_dict()
    # Batches 0 and 1 (before any statistics) are TRL's order of the seed; the two compared are not.
    trl = list(RepeatSampler(range(40), mini_repeat_count=1, batch_size=2, seed=7))
    assert unbroken.drawn[:2] == [trl[0:2], trl[2:4]]
    assert unbroken.drawn[2:] != [trl[4:6], trl[6:8]]
