"""Configurations of FairGRPOTrainer that used to be silently wrong, one process each (the multi-process ones are in
tests/test_distributed.py): each is now exact, or refused with a message naming the setting.

| item | configuration | behaviour | test |
|---|---|---|---|
| 1 | resume from a checkpoint inside a generation batch | the checkpoint holds the states from the batch's start; TRL regenerates the batch on resume and it is counted once | test_checkpoint_inside_a_generation_batch_counts_it_once_on_resume |
| 2 | multi-process evaluation (even_batches padding) | eval rollouts gathered batch by batch, padding dropped by position | test_distributed.py::test_eval_fairness_counts_each_row_once_despite_even_batches_padding |
| 3 | an infinite reward with two or more reward functions | the whole completion is unscorable (advantage 0); logged reward figures leave it out | test_infinite_reward_from_one_of_two_functions_makes_the_completion_unscorable |
| 4 | scale_rewards with fair_grpo, fair_grpo_nd, rloo, reinforce_pp | unset: each estimator's own; a value it does not implement is refused | test_scale_rewards_* |
| 5 | fair_stats_window | counted in optimizer steps (a whole number of generation batches, else refused) | test_stats_window_counts_optimizer_steps* |
| 6 | multi-node without a shared filesystem | process 0's estimator and keyer states broadcast after loading | test_distributed.py::test_resume_uses_rank_0s_state_on_a_rank_whose_checkpoint_lacks_it |
| 7 | balanced_sampling / sampling_weight_column with an IterableDataset | refused at construction | test_sampler_settings_refuse_an_iterable_dataset |
| 8 | evaluation with use_transformers_continuous_batching | the mode is the one a batch started in; evaluation stays in eval mode | test_continuous_batching_evaluation_trains_nothing |
| 9 | tool-calling completions | the fairness log and rewards read the last assistant message's text | test_completion_text_*, test_fairness_log_reads_tool_calling_completions |
| 10 | frac_reward_zero_std under scale_rewards="batch" | fair/frac_zero_signal logged per generation batch: the share of prompts with no signal | test_frac_zero_signal_is_per_prompt |

Also: resuming across an epoch boundary is exact (test_resume_across_an_epoch_boundary_is_exact), and a launch whose
processes accelerate did not join into one run is refused (test_a_launch_accelerate_did_not_join_is_refused).
"""  # noqa: E501 (a markdown table)

import json
import math

import pytest
import torch
from conftest import length_reward, text_dataset, trainer_config
from datasets import IterableDataset

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.advantages import generation_batches, get_spec, zero_signal
from fair_trl.checkpoint_io import ESTIMATOR_STATE_FILE, GROUP_KEYER_STATE_FILE
from fair_trl.launch import check_launch
from fair_trl.rewards import completion_text
from fair_trl.sampling import EpochRepeatSampler


class Recorder(FairGRPOTrainer):
    """Keeps, per estimator call, the step, the local prompts, the rewards it got and the advantages it returned."""

    def _compute_advantages(self, rewards, inputs):
        advantages = super()._compute_advantages(rewards, inputs)
        record = {
            "step": self.state.global_step,
            "prompts": [row["prompt"][-1]["content"] for row in inputs],
            "rewards": rewards.tolist(),
            "advantages": advantages.tolist(),
        }
        self.records = [*getattr(self, "records", []), record]
        return advantages


def trainer(model_dir, tmp_path, data=None, reward=length_reward, cls=Recorder, **overrides):
    return cls(
        model=model_dir,
        reward_funcs=reward,
        args=FairGRPOConfig(**trainer_config(tmp_path, **overrides)),
        train_dataset=data if data is not None else text_dataset(),
    )


def prompts_counted(estimator) -> int:
    return sum(s["prompts"] for s in estimator.state_dict()["domain_stats"].values())


# -- item 1: a checkpoint inside a generation batch ------------------------------------------------------------


def test_checkpoint_inside_a_generation_batch_counts_it_once_on_resume(text_model_dir, tmp_path):
    # One generation batch (4 prompts) spans 2 optimizer steps; a checkpoint after each step.
    settings = dict(steps_per_generation=2, max_steps=2, save_strategy="steps", save_steps=1)
    first = trainer(text_model_dir, tmp_path, **settings)
    first.train()
    assert first.fair_estimator.step == 1 and prompts_counted(first.fair_estimator) == 4
    out = tmp_path / "out"
    inside = json.loads((out / "checkpoint-1" / ESTIMATOR_STATE_FILE).read_text())
    assert inside["step"] == 0 and inside["domain_stats"] == {}  # from before the batch it falls inside
    assert json.loads((out / "checkpoint-1" / GROUP_KEYER_STATE_FILE).read_text())["rows"] == 0
    after = json.loads((out / "checkpoint-2" / ESTIMATOR_STATE_FILE).read_text())
    assert after == first.fair_estimator.state_dict()  # at a batch boundary: the state as it is

    resumed = trainer(text_model_dir, tmp_path, **settings)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    # TRL generated the batch again after the resume; it is in the statistics once, as in the unbroken run.
    (record,) = resumed.records
    assert sorted(record["prompts"]) == sorted(first.records[0]["prompts"])
    assert resumed.fair_estimator.step == 1
    assert prompts_counted(resumed.fair_estimator) == 4
    assert resumed.group_keyer.summary()["rows"] == 4


# -- item 3: an infinite reward with two reward functions --------------------------------------------------------


def first_completion_infinite(completions, **_):
    return [math.inf if i == 0 else 0.0 for i in range(len(completions))]


def test_infinite_reward_from_one_of_two_functions_makes_the_completion_unscorable(text_model_dir, tmp_path):
    run = trainer(text_model_dir, tmp_path, reward=[length_reward, first_completion_infinite], max_steps=2)
    run.train()
    for record in run.records:
        rewards, advantages = record["rewards"], record["advantages"]
        assert math.isnan(rewards[0]) and advantages[0] == 0.0  # not scored on length_reward alone
        assert all(math.isfinite(r) for r in rewards[1:])
        assert any(a != 0 for a in advantages[1:])
    logs = [e for e in run.state.log_history if "reward" in e]
    assert len(logs) == 2
    for entry, record in zip(logs, run.records, strict=True):
        assert entry["reward"] == pytest.approx(sum(record["rewards"][1:]) / 7)  # the scorable completions
        assert math.isfinite(entry["reward_std"])
        assert entry["rewards/first_completion_infinite/mean"] == 0.0
        assert entry["fair/nonfinite_rewards"] == 1.0


# -- item 4: scale_rewards -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimator", "own", "refused"),
    [
        ("fair_grpo", "group", ["batch", "none"]),
        ("fair_grpo_nd", "group", ["batch", "none"]),
        ("rloo", "none", ["group", "batch"]),
        ("reinforce_pp", "batch", ["group", "none"]),
    ],
)
def test_scale_rewards_an_estimator_does_not_implement_is_refused(tmp_path, estimator, own, refused):
    assert FairGRPOConfig(str(tmp_path), use_cpu=True, advantage_estimator=estimator).scale_rewards == own
    assert FairGRPOConfig(str(tmp_path), use_cpu=True, advantage_estimator=estimator, scale_rewards=own)
    for value in refused:
        message = rf"{estimator}'? implements scale_rewards=\['{own}'\] only, got '{value}'"
        with pytest.raises(ValueError, match=message):
            FairGRPOConfig(str(tmp_path), use_cpu=True, advantage_estimator=estimator, scale_rewards=value)


@pytest.mark.parametrize("estimator", ["grpo", "group_dro"])
def test_scale_rewards_reaches_the_estimators_that_implement_it(tmp_path, estimator):
    assert FairGRPOConfig(str(tmp_path), use_cpu=True, advantage_estimator=estimator).scale_rewards == "group"
    for value, given in [("group", "group"), ("batch", "batch"), ("none", "none"), (False, "none"), (True, "group")]:
        config = FairGRPOConfig(str(tmp_path), use_cpu=True, advantage_estimator=estimator, scale_rewards=value)
        assert get_spec(estimator).factory(config).scale_rewards == given
    with pytest.raises(ValueError, match="scale_rewards must be one of"):
        FairGRPOConfig(str(tmp_path), use_cpu=True, advantage_estimator=estimator, scale_rewards="prompt")


# -- item 5: fair_stats_window in optimizer steps -----------------------------------------------------------------


def test_stats_window_counts_optimizer_steps_not_generation_batches(tmp_path):
    def window(**batch):
        config = FairGRPOConfig(str(tmp_path), use_cpu=True, fair_stats_window=8, **batch)
        return get_spec("fair_grpo").factory(config).stats_window

    assert window() == 8
    # The recipe's shape: one generation batch is 4 optimizer steps (steps_per_generation 320 / 80).
    assert window(gradient_accumulation_steps=80, steps_per_generation=320) == 2
    assert window(gradient_accumulation_steps=2, steps_per_generation=1) == 16  # 2 generation batches a step
    assert window(steps_per_generation=2, num_iterations=2) == 2
    with pytest.raises(ValueError, match=r"fair_stats_window=10: .* use a multiple of 4 \(nearest: 8 or 12\)"):
        FairGRPOConfig(
            str(tmp_path), use_cpu=True, fair_stats_window=10, gradient_accumulation_steps=80, steps_per_generation=320
        )
    assert generation_batches(2, gradient_accumulation_steps=3, steps_per_generation=2, num_iterations=1) == 3
    with pytest.raises(ValueError, match=r"nearest: 2\)"):
        generation_batches(1, gradient_accumulation_steps=3, steps_per_generation=2, num_iterations=1)


def test_stats_window_counts_optimizer_steps_in_a_run(text_model_dir, tmp_path):
    # 4 optimizer steps = 2 generation batches of 4 prompts; a 2-step window holds the last batch only.
    run = trainer(text_model_dir, tmp_path, steps_per_generation=2, max_steps=4, fair_stats_window=2)
    run.train()
    assert run.fair_estimator.step == 2
    assert prompts_counted(run.fair_estimator) == 4


# -- item 7: sampler settings with an IterableDataset -------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"balanced_sampling": True}, "balanced_sampling=True"), ({"sampling_weight_column": "w"}, "'w'")],
)
def test_sampler_settings_refuse_an_iterable_dataset(text_model_dir, tmp_path, setting, message):
    data = text_dataset().add_column("w", [1.0] * 32).to_iterable_dataset()
    assert isinstance(data, IterableDataset)
    with pytest.raises(ValueError, match=rf"{message} needs a map-style train_dataset, got IterableDataset"):
        trainer(text_model_dir, tmp_path, data=data, **setting)


# -- item 8: evaluation with transformers' continuous batching ----------------------------------------------------

# Small pages: the default continuous-batching cache makes each CPU batch take seconds.
CONTINUOUS_BATCHING = {"num_blocks": 16, "page_size": 32, "max_batch_tokens": 256, "use_async_batching": False}


def test_continuous_batching_evaluation_trains_nothing(text_model_dir, tmp_path):
    data = text_dataset(8).add_column("solution", ["Normal", "Pneumonia"] * 4)
    run = FairGRPOTrainer(
        model=text_model_dir,
        reward_funcs=length_reward,
        args=FairGRPOConfig(
            **trainer_config(tmp_path),
            use_transformers_continuous_batching=True,
            transformers_continuous_batching_config=CONTINUOUS_BATCHING,
            per_device_eval_batch_size=8,
        ),
        train_dataset=data,
        eval_dataset=data.select(range(4)),  # 2 eval batches of 2 prompts x 4
    )
    before = run.fair_estimator.state_dict()
    metrics = run.evaluate()
    assert not run.model.training
    assert run.fair_estimator.state_dict() == before  # no eval batch was taken for a training batch
    assert run.group_keyer.summary()["rows"] == 0
    assert not run._metrics["train"] and run.fairness_log.rollouts["train"] == []
    assert run.fairness_results["eval"]["sex"]["n"] == 16 and "eval_fairness/sex/f1" in metrics


# -- item 9: tool-calling completions -----------------------------------------------------------------------------

TOOL_CALL = {"type": "function", "function": {"name": "lookup", "arguments": {"case": 1}}}


def test_completion_text_reads_the_last_assistant_message():
    assert completion_text("\\boxed{NV}") == "\\boxed{NV}"
    assert completion_text([{"role": "assistant", "content": "\\boxed{NV}"}]) == "\\boxed{NV}"
    # An assistant turn that only calls a tool has no content; after it, the tool's result.
    assert completion_text([{"role": "assistant", "tool_calls": [TOOL_CALL]}]) == ""
    looped = [
        {"role": "assistant", "content": "let me check", "tool_calls": [TOOL_CALL]},
        {"role": "tool", "name": "lookup", "content": "\\boxed{MEL}"},
        {"role": "assistant", "content": [{"type": "text", "text": "so \\boxed{"}, {"type": "text", "text": "NV}"}]},
    ]
    assert completion_text(looped) == "so \\boxed{NV}"
    assert completion_text(looped[:2]) == "let me check"  # truncated after the tool: not the tool's text
    assert completion_text([{"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}]) == ""


def test_fairness_log_reads_tool_calling_completions(text_model_dir, tmp_path):
    data = text_dataset(4).add_column("solution", ["Normal"] * 4)
    run = trainer(text_model_dir, tmp_path, data=data, fairness_logging_steps=1)
    rows = [dict(row) for row in data]
    completions = [
        [{"role": "assistant", "tool_calls": [TOOL_CALL]}],
        [{"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]}, {"role": "tool", "content": "\\boxed{X}"}],
        [{"role": "assistant", "tool_calls": [TOOL_CALL]}, {"role": "tool", "content": "{}"},
         {"role": "assistant", "content": "\\boxed{Normal}"}],
        [{"role": "assistant", "content": "\\boxed{Pneumonia}"}],
    ]  # fmt: skip
    run._record_rollouts(rows, completions)
    assert [r.answer for r in run.fairness_log.rollouts["train"]] == [None, None, "Normal", "Pneumonia"]


# -- item 10: the share of prompts without signal -----------------------------------------------------------------


def constant_on_chexpert(completions, dataset, **_):
    return [1.0 if d == "chexpert" else r for d, r in zip(dataset, length_reward(completions), strict=True)]


def test_frac_zero_signal_is_per_prompt(text_model_dir, tmp_path):
    # REINFORCE++ scales by the batch std, so TRL's frac_reward_zero_std is one whole-batch figure.
    run = trainer(
        text_model_dir, tmp_path, reward=constant_on_chexpert, advantage_estimator="reinforce_pp", max_steps=4
    )
    run.train()
    logged = [e for e in run.state.log_history if "fair/frac_zero_signal" in e]
    assert len(logged) == len(run.records) == 4
    for entry, record in zip(logged, run.records, strict=True):
        expected = zero_signal(torch.tensor(record["rewards"]), 4).float().mean().item()
        chexpert = sum(d == "chexpert" for d in _domains(record["prompts"], text_dataset())) / 8
        assert entry["fair/frac_zero_signal"] == pytest.approx(expected) == pytest.approx(chexpert)
    assert any(e["frac_reward_zero_std"] != e["fair/frac_zero_signal"] for e in logged)


def _domains(prompts, data):
    by_prompt = {row["prompt"][-1]["content"]: row["dataset"] for row in data}
    return [by_prompt[p] for p in prompts]


def test_zero_signal_per_prompt():
    nan = math.nan
    # signal; all equal; equal where scored; one scored
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, nan, 0.5, nan, 2.0, nan, nan, nan])
    assert zero_signal(rewards, 4).tolist() == [False, True, True, True]


# -- resume across an epoch boundary ------------------------------------------------------------------------------


def test_epoch_sampler_puts_any_epoch_at_trls_order():
    from trl.trainer.utils import RepeatSampler

    trl = RepeatSampler(list(range(10)), mini_repeat_count=2, batch_size=2, repeat_count=2, seed=3)
    epochs = [list(trl) for _ in range(3)]
    ours = EpochRepeatSampler(list(range(10)), mini_repeat_count=2, batch_size=2, repeat_count=2, seed=3)
    assert [list(ours) for _ in range(3)] == epochs  # without set_epoch: TRL's sampler
    for epoch in (2, 0, 1):
        ours.set_epoch(epoch)
        assert list(ours) == epochs[epoch]


def test_resume_across_an_epoch_boundary_is_exact(text_model_dir, tmp_path):
    # 3 rows, 1 prompt a step: 3 steps an epoch. Checkpoints at the boundary (3) and inside epoch 2 (4).
    data, batch = text_dataset(3), dict(per_device_train_batch_size=4, max_steps=5)
    full = trainer(text_model_dir, tmp_path, data=data, save_strategy="steps", save_steps=1, **batch)
    full.train()
    for checkpoint in (3, 4):
        resumed = trainer(text_model_dir, tmp_path / f"from{checkpoint}", data=data, **batch)
        resumed.train(resume_from_checkpoint=str(tmp_path / "out" / f"checkpoint-{checkpoint}"))
        assert resumed.records == full.records[checkpoint:]
        assert resumed.fair_estimator.state_dict() == full.fair_estimator.state_dict()
        for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    # Epoch 2 drew its own order: not epoch 1's again.
    assert [r["prompts"] for r in full.records[3:]] != [r["prompts"] for r in full.records[:2]]


# -- a launch accelerate did not join --------------------------------------------------------------------------


def test_a_launch_accelerate_did_not_join_is_refused(monkeypatch):
    class Single:
        num_processes = 1
        distributed_type = "DistributedType.NO"

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    with pytest.raises(RuntimeError, match=r"launched as 2 processes, but accelerate set up a 1-process run.*use_cpu"):
        check_launch(Single())
    Single.num_processes = 2
    check_launch(Single())
