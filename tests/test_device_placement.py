"""Advantages stay on the rewards' device, and nothing in FairGRPO's path reads a device tensor as numpy.

No GPU runs in CI, so a CUDA tensor is played by `OnStandIn`: a CPU tensor that reports a stand-in device
(`meta`) and, like a CUDA tensor, refuses `.numpy()` and `np.asarray` until moved with `.cpu()`.
`StandInDevice` sends every tensor asked for on the stand-in device (`torch.as_tensor(x,
device=rewards.device)`, `.to(rewards.device)`, `.to(rewards)`) to the CPU and marks it as on the stand-in.
A code path that builds its result on the CPU without following the rewards' device returns a plain tensor,
and one that reads a device tensor as numpy raises: either fails these tests, as either would fail on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import length_reward, text_dataset, trainer_config
from torch.overrides import TorchFunctionMode
from trl import GRPOTrainer

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.advantages import REGISTRY

STAND_IN = torch.device("meta")


class OnStandIn(torch.Tensor):
    """A CPU tensor posing as one on the stand-in device, with a CUDA tensor's refusal to become numpy."""

    @property
    def device(self) -> torch.device:
        return STAND_IN

    @property
    def is_cpu(self) -> bool:
        return False

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert a stand-in device tensor to numpy: use Tensor.cpu() first")

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert a stand-in device tensor to numpy: use Tensor.cpu() first")

    def cpu(self, *args, **kwargs) -> torch.Tensor:
        return self.as_subclass(torch.Tensor).clone()


def on_stand_in(tensor: torch.Tensor) -> OnStandIn:
    return tensor.as_subclass(OnStandIn)


def _is_stand_in(device) -> bool:
    return device is not None and torch.device(device) == STAND_IN


class StandInDevice(TorchFunctionMode):
    """Serves requests for the stand-in device from the CPU, marking the results as on the stand-in."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        wanted = None  # True: the caller asked for the stand-in device; False: for another device
        if "device" in kwargs and kwargs["device"] is not None:
            wanted = _is_stand_in(kwargs["device"])
            if wanted:
                del kwargs["device"]
        if func is torch.Tensor.to:
            args = list(args)
            for i, arg in enumerate(args[1:], start=1):
                if isinstance(arg, torch.Tensor):
                    wanted = isinstance(arg, OnStandIn)
                    args[i] = arg.dtype
                elif isinstance(arg, (str, torch.device)):
                    wanted = _is_stand_in(arg)
                    if wanted:
                        args[i] = torch.device("cpu")
            args = tuple(args)
        result = func(*args, **kwargs)
        if isinstance(result, torch.Tensor):
            if wanted:
                return on_stand_in(result)
            if wanted is False and isinstance(result, OnStandIn):
                return result.as_subclass(torch.Tensor)
        return result


def test_the_stand_in_catches_what_a_gpu_would():
    with StandInDevice():
        rewards = on_stand_in(torch.rand(8))
        assert rewards.device == STAND_IN
        with pytest.raises(TypeError, match="numpy"):
            rewards.numpy()
        with pytest.raises(TypeError, match="numpy"):
            np.asarray(rewards)
        assert isinstance(rewards.cpu(), torch.Tensor) and not isinstance(rewards.cpu(), OnStandIn)
        assert isinstance(rewards * 2, OnStandIn)
        assert isinstance(torch.as_tensor(np.ones(3), device=rewards.device), OnStandIn)
        assert isinstance(torch.ones(3).to(rewards.device), OnStandIn)
        assert isinstance(torch.ones(3).to(rewards), OnStandIn)
        assert not isinstance(torch.as_tensor(np.ones(3)), OnStandIn)
        assert not isinstance(rewards.to("cpu"), OnStandIn)


def _sample_inputs(prompts: int, generations: int):
    rng = np.random.default_rng(0)
    rewards = torch.as_tensor((rng.random(prompts * generations) < 0.4).astype(np.float32))
    domains = [f"d{(i // generations) % 3}" for i in range(prompts * generations)]
    groups = [
        None if (i // generations) % 4 == 0 else f"sex={'FM'[(i // generations) % 2]}" for i in range(len(domains))
    ]
    return rewards, domains, groups


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_estimator_returns_on_the_rewards_device_and_dtype(name, dtype):
    rewards, domains, groups = _sample_inputs(prompts=12, generations=4)
    estimator = REGISTRY[name].factory(
        FairGRPOConfig(output_dir="unused", use_cpu=True, bf16=False, advantage_estimator=name)
    )
    reference = REGISTRY[name].factory(
        FairGRPOConfig(output_dir="unused", use_cpu=True, bf16=False, advantage_estimator=name)
    )
    for _ in range(3):
        expected = reference(rewards.to(dtype), 4, domains, groups)
        with StandInDevice():
            got = estimator(on_stand_in(rewards.to(dtype)), 4, domains, groups)
        assert isinstance(got, OnStandIn), f"{name} returned its advantages off the rewards' device"
        assert got.dtype == dtype
        assert torch.equal(got.as_subclass(torch.Tensor), expected), "the device changed the advantages"


class StandInRewardsTrainer(FairGRPOTrainer):
    """Records where `_compute_advantages` got its rewards and put its advantages, and each fairness log."""

    def _compute_advantages(self, rewards, inputs):
        advantages = super()._compute_advantages(rewards, inputs)
        self.placements = getattr(self, "placements", []) + [
            (isinstance(rewards, OnStandIn), isinstance(advantages, OnStandIn), advantages.dtype)
        ]
        return advantages

    def _generate_and_score_completions(self, inputs):
        # Past the seam TRL's loss takes over, on the model's device: here the CPU.
        output = super()._generate_and_score_completions(inputs)
        output["advantages"] = output["advantages"].as_subclass(torch.Tensor)
        return output

    def log_fairness(self):
        super().log_fairness()
        self.fairness_logged = getattr(self, "fairness_logged", 0) + 1


@pytest.mark.parametrize("estimator", ["fair_grpo", "fair_grpo_nd", "group_dro"])
def test_trainer_keeps_advantages_and_fairness_log_on_the_rewards_device(
    text_model_dir, tmp_path, estimator, monkeypatch
):
    # TRL gathers the rewards on the accelerator's device: here, on the stand-in.
    calculate_rewards = GRPOTrainer._calculate_rewards
    monkeypatch.setattr(
        GRPOTrainer, "_calculate_rewards", lambda self, *a, **k: on_stand_in(calculate_rewards(self, *a, **k))
    )
    data = text_dataset()
    trainer = StandInRewardsTrainer(
        model=text_model_dir,
        reward_funcs=length_reward,
        args=FairGRPOConfig(
            **trainer_config(tmp_path, max_steps=2), advantage_estimator=estimator, fairness_logging_steps=1
        ),
        train_dataset=data.add_column("solution", [("Normal", "Pneumonia")[i % 2] for i in range(len(data))]),
    )
    with StandInDevice():
        trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.placements and all(p == (True, True, torch.float32) for p in trainer.placements)
    assert trainer.fairness_logged == 2
    assert trainer.fairness_results["train"], "the fairness log computed nothing"
