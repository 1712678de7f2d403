"""Advantage estimators as plain torch/numpy code, and the one registry that names them.

Nothing here imports the trainer: each estimator maps a flat reward tensor in TRL's layout to one
advantage per completion, so it can be checked against the paper equation by equation and tested
without a model. A method is one `EstimatorSpec` in `REGISTRY` plus its module:

- `grpo`: TRL's own group normalisation, op for op;
- `fair_grpo`: FairGRPO (section 3, eq. 1-2 and the batch renormalisation) and its variants;
- `clustering`: the latent groups (exact k-means for 0/1 rewards, Lloyd's, seeded, for graded ones, the elbow rule);
- `baselines`: RLOO, REINFORCE++ and Group DRO, the paper's comparisons.

`FairGRPOConfig.advantage_estimator` picks an entry; config validation, the trainer, the model card,
the recipes and the demo all read the entry, so adding a method is `register(EstimatorSpec(...))`.
"""

from __future__ import annotations

from typing import Any

from fair_trl.advantages.base import SCALE_REWARDS, AdvantageEstimator, EstimatorSpec, Stateful
from fair_trl.advantages.baselines import GroupDROAdvantage, ReinforcePPAdvantage, RLOOAdvantage, reinforce_pp, rloo
from fair_trl.advantages.clustering import kmeans_elbow, rollout_features
from fair_trl.advantages.fair_grpo import FairGRPOAdvantage, GroupStats, temperature
from fair_trl.advantages.grpo import TRL_STD_EPS, GRPOAdvantage, grpo
from fair_trl.advantages.layout import as_prompt_rows, generation_batches, nanstd, per_prompt, zero_signal

__all__ = [
    "REGISTRY",
    "SCALE_REWARDS",
    "TRL_STD_EPS",
    "AdvantageEstimator",
    "EstimatorSpec",
    "FairGRPOAdvantage",
    "GRPOAdvantage",
    "GroupDROAdvantage",
    "GroupStats",
    "RLOOAdvantage",
    "ReinforcePPAdvantage",
    "Stateful",
    "as_prompt_rows",
    "generation_batches",
    "get_spec",
    "grpo",
    "kmeans_elbow",
    "nanstd",
    "per_prompt",
    "register",
    "reinforce_pp",
    "rloo",
    "rollout_features",
    "scale_rewards_choices",
    "stats_window_batches",
    "temperature",
    "unregister",
    "zero_signal",
]

REGISTRY: dict[str, EstimatorSpec] = {}


def register(spec: EstimatorSpec) -> EstimatorSpec:
    """Add an estimator under ``spec.name``; a name is registered once."""
    if spec.name in REGISTRY:
        raise ValueError(f"an advantage estimator named {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> EstimatorSpec:
    return REGISTRY.pop(name)


def get_spec(name: str) -> EstimatorSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"advantage_estimator={name!r} is not one of {list(REGISTRY)}") from None


def scale_rewards_choices(name: str) -> tuple[str, ...]:
    """The `scale_rewards` values estimator `name` implements; the first is its own definition."""
    return get_spec(name).scale_rewards


def stats_window_batches(config: Any) -> int | None:
    """`fair_stats_window` (optimizer steps) as the estimator counts it: in calls, one per generation batch."""
    if config.fair_stats_window is None:
        return None
    try:
        return generation_batches(
            config.fair_stats_window,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            steps_per_generation=config.steps_per_generation,
            num_iterations=config.num_iterations,
        )
    except ValueError as err:
        raise ValueError(f"fair_stats_window={config.fair_stats_window}: {err}") from None


def _fair_grpo(config: Any, use_demographics: bool) -> FairGRPOAdvantage:
    return FairGRPOAdvantage(
        use_demographics=use_demographics,
        epsilon=config.fair_epsilon,
        norm_epsilon=config.fair_norm_epsilon,
        max_clusters=config.cluster_max_k,
        elbow_threshold=config.cluster_elbow_threshold,
        cluster_pool_size=config.cluster_pool_size,
        seed=config.seed,
        reward_min=config.fair_reward_min,
        reward_floor=config.fair_reward_floor,
        max_weight_ratio=config.fair_max_weight_ratio,
        stats_window=stats_window_batches(config),
    )


register(
    EstimatorSpec(
        name="grpo",
        display_name="GRPO",
        description="group relative policy optimisation: each rollout's reward normalised within its prompt's group",
        factory=lambda config: GRPOAdvantage(scale_rewards=config.scale_rewards),
        keeps_trl_advantages=True,
    )
)
# Why the FairGRPO estimators implement scale_rewards="group" only.
FAIR_GRPO_SCALING = (
    "FairGRPO's first step (eq. i) normalises each reward by its prompt's mean and std, and its temperatures and "
    "batch renormalisation are defined on those scores"
)

register(
    EstimatorSpec(
        name="fair_grpo",
        display_name="FairGRPO",
        description="fairness-aware GRPO: each prompt's normalised advantage is divided by temperatures of its "
        "domain and demographic group (sqrt(count) x mean reward), so under-represented and harder groups weigh "
        "more; prompts without demographics get latent groups by clustering",
        factory=lambda config: _fair_grpo(config, use_demographics=True),
        scale_rewards=("group",),
        scale_rewards_reason=FAIR_GRPO_SCALING,
    )
)
register(
    EstimatorSpec(
        name="fair_grpo_nd",
        display_name="FairGRPO-ND",
        description="FairGRPO without demographics: every prompt's group is discovered by k-means on its rollout "
        "rewards",
        factory=lambda config: _fair_grpo(config, use_demographics=False),
        scale_rewards=("group",),
        scale_rewards_reason=FAIR_GRPO_SCALING,
    )
)
register(
    EstimatorSpec(
        name="rloo",
        display_name="RLOO",
        description="REINFORCE leave-one-out: each rollout's baseline is the mean reward of the prompt's others",
        factory=lambda config: RLOOAdvantage(),
        scale_rewards=("none",),
        scale_rewards_reason="RLOO's advantage is a reward minus the mean of its prompt's other rewards, unscaled",
    )
)
register(
    EstimatorSpec(
        name="reinforce_pp",
        display_name="REINFORCE++",
        description="REINFORCE with advantages normalised over the whole batch",
        factory=lambda config: ReinforcePPAdvantage(),
        scale_rewards=("batch",),
        scale_rewards_reason="REINFORCE++ normalises advantages by the mean and std of the whole batch",
    )
)
register(
    EstimatorSpec(
        name="group_dro",
        display_name="GRPO + Group DRO",
        description="GRPO with online Group DRO weights that up-weight the demographic groups with the lowest reward",
        factory=lambda config: GroupDROAdvantage(step_size=config.dro_step_size, scale_rewards=config.scale_rewards),
    )
)
