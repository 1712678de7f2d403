"""FairGRPOTrainer running real TRL steps on CPU with tiny offline models."""

import json
import os

import pytest
import torch
from conftest import RecordingTrainer, demo_dataset, length_reward, text_dataset, trainer_config
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from fair_trl import FairGRPOAdvantage, FairGRPOConfig, FairGRPOTrainer
from fair_trl.checkpoint_io import ESTIMATOR_STATE_FILE
from fair_trl.models import build_tiny_vlm

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def config(tmp_path, **overrides):
    return trainer_config(tmp_path, **overrides)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_grpo_estimator_is_step_for_step_plain_grpo(text_model_dir, tmp_path):
    data = text_dataset()
    plain = GRPOTrainer(
        model=text_model_dir, reward_funcs=length_reward, args=GRPOConfig(**config(tmp_path)), train_dataset=data
    )
    plain.train()
    fair = FairGRPOTrainer(
        model=text_model_dir,
        reward_funcs=length_reward,
        args=FairGRPOConfig(**config(tmp_path), advantage_estimator="grpo"),
        train_dataset=data,
    )
    fair.train()
    a, b = weights(plain.model), weights(fair.model)
    initial = weights(AutoModelForCausalLM.from_pretrained(text_model_dir))
    assert any(not torch.equal(a[k], initial[k]) for k in a), "training did not move the weights"
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert list(plain._logs["advantages"]) == list(fair._logs["advantages"])


@pytest.mark.parametrize("estimator", ["fair_grpo", "fair_grpo_nd"])
def test_fair_estimators_train_and_log(text_model_dir, tmp_path, estimator):
    trainer = RecordingTrainer(
        model=text_model_dir,
        reward_funcs=length_reward,
        args=FairGRPOConfig(**config(tmp_path), advantage_estimator=estimator),
        train_dataset=text_dataset(),
    )
    before = weights(trainer.model)
    trainer.train()
    assert trainer.state.global_step == 3
    assert any(not torch.equal(v, before[k]) for k, v in weights(trainer.model).items())

    # What TRL trained on is what the estimator returned, and the completions table shows the same.
    for (_, advantages), trained in zip(trainer.recorded, trainer.trained_on, strict=True):
        assert torch.equal(advantages, trained)
        assert advantages.std().item() == pytest.approx(1.0, rel=1e-4) or torch.all(advantages == 0)
    last = trainer.recorded[-1][1].tolist()
    assert list(trainer._logs["advantages"])[-len(last) :] == last

    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "fair/num_clusters" in logged and "fair/unknown_group_frac" in logged
    assert any(k.startswith("fair/weight/") for k in logged)
    state = trainer.fair_estimator.state_dict()
    assert sum(s["prompts"] for s in state["domain_stats"].values()) == 3 * 2  # 2 prompts a step
    if estimator == "fair_grpo_nd":
        assert state["group_stats"] == {}
    assert trainer.group_keyer.summary()["rows"] == 3 * 2  # keyed once per prompt, not per completion


def test_bad_demographics_are_counted_not_fatal(text_model_dir, tmp_path, caplog):
    data = text_dataset().remove_columns(["sex", "age"])
    data = data.add_column("sex", ["Other", "U"] * 16).add_column("age", ["-5", "abc", "200", "45 years"] * 8)
    trainer = FairGRPOTrainer(
        model=text_model_dir,
        reward_funcs=length_reward,
        args=FairGRPOConfig(**config(tmp_path, max_steps=2)),
        train_dataset=data,
    )
    with caplog.at_level("WARNING", logger="fair_trl.groups"):
        trainer.train()
    summary = trainer.group_keyer.summary()
    assert summary["invalid"]["age"] == 4 and summary["rows_without_key"] == 4
    assert sum("age" in r.getMessage() for r in caplog.records) == 1  # reported once, then counted
    assert trainer.fair_estimator.group_stats == {}  # every prompt went to clustering
    history = [e for e in trainer.state.log_history if "fair/unknown_group_frac" in e]
    assert history and all(e["fair/unknown_group_frac"] == 1.0 for e in history)


def test_trainer_only_wires_the_estimator(text_model_dir, tmp_path):
    class MetadataTrainer(RecordingTrainer):
        def _gather_group_metadata(self, inputs):
            metadata = super()._gather_group_metadata(inputs)
            self.metadata = getattr(self, "metadata", []) + [metadata]
            return metadata

    trainer = MetadataTrainer(
        model=text_model_dir,
        reward_funcs=length_reward,
        args=FairGRPOConfig(**config(tmp_path, max_steps=3)),
        train_dataset=text_dataset(),
    )
    trainer.train()
    # The same gathered rewards and metadata through a fresh estimator give the same advantages.
    replay = FairGRPOAdvantage(seed=trainer.args.seed)
    for (rewards, advantages), (domains, groups) in zip(trainer.recorded, trainer.metadata, strict=True):
        assert len(domains) == len(rewards) == 8
        assert torch.equal(replay(rewards, 4, domains, groups), advantages)
    assert replay.state_dict() == trainer.fair_estimator.state_dict()


def test_missing_column_fails_at_construction(text_model_dir, tmp_path):
    # Named explicitly, a column the data lacks is an error (left at its default, it is dropped: test_dropin.py).
    data = text_dataset().remove_columns("sex")
    with pytest.raises(ValueError, match=r"no column 'sex' \(FairGRPOConfig.demographic_columns\).*'age'"):
        FairGRPOTrainer(
            model=text_model_dir,
            reward_funcs=length_reward,
            args=FairGRPOConfig(**config(tmp_path), demographic_columns=["sex", "age"]),
            train_dataset=data,
        )
    with pytest.raises(ValueError, match="no column 'site'.*domain_column"):
        FairGRPOTrainer(
            model=text_model_dir,
            reward_funcs=length_reward,
            args=FairGRPOConfig(**config(tmp_path), domain_column="site"),
            train_dataset=text_dataset(),
        )
    with pytest.raises(TypeError, match="FairGRPOConfig"):
        FairGRPOTrainer(model=text_model_dir, reward_funcs=length_reward, args=GRPOConfig(**config(tmp_path)))


def test_checkpoint_then_resume_restores_estimator_state(text_model_dir, tmp_path):
    args = config(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    first = FairGRPOTrainer(
        model=text_model_dir, reward_funcs=length_reward, args=FairGRPOConfig(**args), train_dataset=text_dataset()
    )
    first.train()
    checkpoint = tmp_path / "out" / "checkpoint-2"
    saved = json.loads((checkpoint / ESTIMATOR_STATE_FILE).read_text())
    assert saved["step"] == 2
    assert json.loads((tmp_path / "out" / "checkpoint-4" / ESTIMATOR_STATE_FILE).read_text())["step"] == 4

    resumed = FairGRPOTrainer(
        model=text_model_dir, reward_funcs=length_reward, args=FairGRPOConfig(**args), train_dataset=text_dataset()
    )
    loaded = []
    original_load = resumed.fair_estimator.load_state_dict
    resumed.fair_estimator.load_state_dict = lambda state: (loaded.append(state), original_load(state))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert loaded == [saved]
    assert resumed.fair_estimator.step == 4  # 2 restored + 2 trained after the resume
    counts = {d: s["prompts"] for d, s in resumed.fair_estimator.state_dict()["domain_stats"].items()}
    assert sum(counts.values()) == 4 * 2


@pytest.mark.parametrize("estimator", ["grpo", "fair_grpo", "fair_grpo_nd"])
def test_vlm_trains_with_images(tmp_path, estimator):
    model, processor = build_tiny_vlm(seed=0)
    before = weights(model)
    trainer = FairGRPOTrainer(
        model=model,
        reward_funcs=length_reward,
        args=FairGRPOConfig(**config(tmp_path, max_steps=2), advantage_estimator=estimator),
        train_dataset=demo_dataset(num_rows=16),
        processing_class=processor,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(v, before[k]) for k, v in weights(trainer.model).items())
    if estimator != "grpo":
        assert trainer.fair_estimator.step == 2
