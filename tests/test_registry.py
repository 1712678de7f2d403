"""The registry of methods: one entry names an estimator everywhere (config, trainer, model card, demo)."""

import dataclasses

import pytest
import torch
from conftest import RecordingTrainer, length_reward, text_dataset, trainer_config

from fair_trl import FairGRPOConfig
from fair_trl.advantages import REGISTRY, AdvantageEstimator, EstimatorSpec, Stateful, register, unregister
from fair_trl.advantages.layout import as_prompt_rows
from fair_trl.demo.experiment import METHODS, _method
from fair_trl.model_card import ModelCardRecord, card_hyperparameters, method_name, render_model_card


class SignAdvantage:
    """A toy estimator: +1 above the prompt's mean reward, -1 below, 0 at it."""

    needs_groups = False
    metric_prefix = "sign"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.last_info = {}

    def __call__(self, rewards, num_generations, domains, groups):
        rows = as_prompt_rows(rewards, num_generations)
        return (self.scale * torch.sign(rows - rows.mean(dim=1, keepdim=True))).reshape(-1)


@dataclasses.dataclass
class ToyConfig(FairGRPOConfig):
    """A user's config with a field for their own estimator, declared as that estimator's."""

    estimator_fields = {**FairGRPOConfig.estimator_fields, "toy_sign": ("toy_scale",)}
    toy_scale: float = dataclasses.field(default=1.0, metadata={"help": "Toy scale."})


@pytest.fixture
def toy():
    spec = register(
        EstimatorSpec(
            name="toy_sign",
            display_name="Toy sign",
            description="sign of the reward against the prompt's mean",
            factory=lambda config: SignAdvantage(scale=config.toy_scale),
        )
    )
    yield spec
    unregister("toy_sign")


def test_every_entry_builds_an_estimator_from_a_default_config(tmp_path):
    for name, spec in REGISTRY.items():
        assert spec.name == name
        config = FairGRPOConfig(str(tmp_path), use_cpu=True, advantage_estimator=name)
        estimator = spec.factory(config)
        assert isinstance(estimator, AdvantageEstimator), name
        assert isinstance(estimator.needs_groups, bool) and estimator.metric_prefix
        own = {f.name for f in dataclasses.fields(FairGRPOConfig)}
        assert set(spec.config_fields(config)) <= own, name
        advantages = estimator(torch.tensor([0.0, 1.0, 1.0, 1.0]), 2, ["d"] * 4, ["g", "g", None, None])
        assert advantages.shape == (4,) and torch.isfinite(advantages).all()


def test_display_names_are_unique_and_the_card_and_demo_use_them():
    names = [spec.display_name for spec in REGISTRY.values()]
    assert len(names) == len(set(names))
    for name, spec in REGISTRY.items():
        assert method_name(name) == (spec.display_name, spec.description)
    for method in METHODS.values():
        assert method.estimator in REGISTRY
        # A demo method that changes nothing but its seeds (the noise check's GRPO reruns) says so in its label.
        if not method.config and not (method.sampling_seed_shift or method.order_seed_shift):
            assert method.label == REGISTRY[method.estimator].display_name


def test_stateful_estimators_are_exactly_those_with_running_statistics(tmp_path):
    stateful = set()
    for name, spec in REGISTRY.items():
        estimator = spec.factory(FairGRPOConfig(str(tmp_path), use_cpu=True, advantage_estimator=name))
        if isinstance(estimator, Stateful):
            stateful.add(name)
    assert stateful == {"fair_grpo", "fair_grpo_nd", "group_dro"}


def test_a_name_registers_once_and_an_unknown_name_lists_the_choices(tmp_path, toy):
    with pytest.raises(ValueError, match="already registered"):
        register(toy)
    with pytest.raises(ValueError, match=r"advantage_estimator='ppo' is not one of \[.*'toy_sign'\]"):
        FairGRPOConfig(str(tmp_path), use_cpu=True, advantage_estimator="ppo")
    with pytest.raises(ValueError, match="scale_rewards must be among"):
        EstimatorSpec("bad", "Bad", "bad", factory=SignAdvantage, scale_rewards=("per_token",))


def test_a_registered_toy_estimator_trains_names_its_card_and_joins_the_demo(text_model_dir, tmp_path, toy):
    """Adding a method is one registry entry: config validation, the trainer and the card follow from it."""
    args = ToyConfig(**trainer_config(tmp_path, max_steps=2), advantage_estimator="toy_sign", toy_scale=2.0)
    trainer = RecordingTrainer(
        model=text_model_dir, reward_funcs=length_reward, args=args, train_dataset=text_dataset()
    )
    trainer.train()
    assert isinstance(trainer.estimator, SignAdvantage) and trainer.estimator.scale == pytest.approx(2.0)
    for (rewards, advantages), trained in zip(trainer.recorded, trainer.trained_on, strict=True):
        rows = rewards.view(-1, args.num_generations)
        expected = 2.0 * torch.sign(rows - rows.mean(dim=1, keepdim=True)).reshape(-1)
        assert torch.equal(advantages, expected)
        assert torch.equal(trained, expected[: len(trained)])

    hyperparameters = card_hyperparameters(trainer.args)
    assert hyperparameters["toy_scale"] == 2.0  # the estimator's own field, shown for it
    assert "dro_step_size" not in hyperparameters and "cluster_max_k" not in hyperparameters
    record = trainer.model_card_record(dataset_names="synthetic")
    assert record.method == "toy_sign"
    assert "fine-tuned with **Toy sign**" in render_model_card(record)
    assert _method("toy_sign", "main", "toy").label == "Toy sign"


def test_card_names_variants_and_samplers_that_used_to_read_as_the_plain_method(tmp_path):
    def card(**values):
        record = ModelCardRecord(
            base_model="org/base", datasets=["org/data"], hyperparameters={}, fairness=None, **values
        )
        return render_model_card(record)

    floored = card(method="fair_grpo", variants={"fair_reward_floor": 0.3})
    assert "**FairGRPO (variant: fair_reward_floor=0.3)**" in floored
    assert "**GRPO + weighted sampling**" in card(method="grpo", sampler="weighted:oracle_weight")
    assert "`oracle_weight` column" in card(method="grpo", sampler="weighted:oracle_weight")
    assert "**FairGRPO + Resampling**" in card(method="fair_grpo", sampler="balanced")

    floor = FairGRPOConfig(str(tmp_path), use_cpu=True, fair_reward_floor=0.3, fair_stats_window=20)
    assert REGISTRY["fair_grpo"].active_variants(floor) == {"fair_reward_floor": 0.3, "fair_stats_window": 20}
    shown = card_hyperparameters(floor)
    assert shown["fair_reward_floor"] == 0.3 and shown["fair_stats_window"] == 20
    assert "dro_step_size" not in shown
    plain = FairGRPOConfig(str(tmp_path), use_cpu=True, advantage_estimator="group_dro")
    assert REGISTRY["group_dro"].active_variants(plain) == {}
    assert "cluster_max_k" not in card_hyperparameters(plain) and "dro_step_size" in card_hyperparameters(plain)
