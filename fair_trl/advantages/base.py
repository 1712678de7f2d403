"""What an advantage estimator is: the call every estimator answers, and the registry entry that names it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

__all__ = ["SCALE_REWARDS", "AdvantageEstimator", "EstimatorSpec", "Stateful"]

# TRL's `scale_rewards` values.
SCALE_REWARDS = ("group", "batch", "none")


@runtime_checkable
class AdvantageEstimator(Protocol):
    """``est(rewards, num_generations, domains, groups) -> advantages``, one per completion.

    `rewards` is 1-D in TRL's layout (`fair_trl.advantages.layout`), NaN where no reward function could
    score a completion. `domains` and `groups` are per completion; the trainer gathers them only for an
    estimator with ``needs_groups`` (others get None). ``last_info`` holds what the last call wants logged:
    ``last_info["weight"]`` ({key: weight}) is logged as ``{metric_prefix}/weight/{key}``.
    """

    needs_groups: ClassVar[bool]
    metric_prefix: ClassVar[str]
    last_info: dict[str, Any]

    def __call__(
        self,
        rewards: torch.Tensor,
        num_generations: int,
        domains: Sequence[str] | None,
        groups: Sequence[str | None] | None,
    ) -> torch.Tensor: ...


@runtime_checkable
class Stateful(Protocol):
    """An estimator with running statistics; the trainer checkpoints them as JSON."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class EstimatorSpec:
    """One registry entry: everything the config, the trainer, the model card and the demo need to know.

    `factory` builds the estimator from a `FairGRPOConfig`. `scale_rewards`: the values of TRL's
    `scale_rewards` it implements, its own definition first (what it does when the field is unset); any
    other value would be silently ignored, so config validation refuses it, giving `scale_rewards_reason`
    (why the method implements only those).
    `keeps_trl_advantages`: the estimator reproduces TRL's own advantages, so the trainer may leave
    TRL's output alone (it then works with any ``multi_objective_aggregation``).

    The config fields an estimator reads are declared once, by the config class: its
    ``estimator_fields`` ({estimator name: field names}) and ``variant_fields`` (those that switch on a
    documented departure from the paper's method; the model card names them).
    """

    name: str
    display_name: str
    description: str
    factory: Callable[[Any], AdvantageEstimator]
    scale_rewards: tuple[str, ...] = SCALE_REWARDS
    keeps_trl_advantages: bool = False
    scale_rewards_reason: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scale_rewards) - set(SCALE_REWARDS))
        if not self.scale_rewards or unknown:
            raise ValueError(f"estimator {self.name!r}: scale_rewards must be among {list(SCALE_REWARDS)}")

    def config_fields(self, config: Any) -> tuple[str, ...]:
        """The fields of `config` (a config class or instance) that this estimator reads."""
        return tuple(getattr(config, "estimator_fields", {}).get(self.name, ()))

    def active_variants(self, config: Any) -> dict[str, Any]:
        """The variant fields `config` sets away from their defaults (the paper's method)."""
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        variants = getattr(config, "variant_fields", ())
        return {
            name: getattr(config, name)
            for name in self.config_fields(config)
            if name in variants and getattr(config, name) != defaults[name]
        }
