"""`FairGRPOConfig`: TRL's `GRPOConfig` plus the fields FairGRPO needs, documented like TRL's own."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from fair_trl.groups import GroupKeyer

ADVANTAGE_ESTIMATORS = ("grpo", "fair_grpo", "fair_grpo_nd", "rloo", "reinforce_pp", "group_dro")
# Estimators that need each prompt's domain and demographic group.
GROUP_AWARE_ESTIMATORS = ("fair_grpo", "fair_grpo_nd", "group_dro")


@dataclass
class FairGRPOConfig(GRPOConfig):
    r"""
    Configuration for [`FairGRPOTrainer`]: every [`~trl.GRPOConfig`] field, plus the ones below.

    Parameters:
        advantage_estimator (`str`, defaults to `"fair_grpo"`):
            `"grpo"` (TRL's own advantages), `"fair_grpo"`, `"fair_grpo_nd"` (FairGRPO without
            demographics: every prompt's group is discovered by clustering), or the paper's baselines
            `"rloo"` (leave-one-out baseline), `"reinforce_pp"` (REINFORCE++: global batch normalisation),
            `"group_dro"` (GRPO with online Group DRO weights). GRPO + Resampling is `"grpo"` with
            `balanced_sampling=True`.
        domain_column (`str` or `None`, defaults to `"dataset"`):
            Dataset column naming each row's domain (the source dataset). `None` puts every row in one domain.
        demographic_columns (`list[str]`, defaults to `["sex", "age"]`):
            Dataset columns whose values, intersected, form a row's demographic group.
        age_bins (`list[float]`, defaults to `[25, 50, 75]`):
            Upper bounds of the age bins a1, a2, ...; ages above the last bound form the last bin.
        max_age (`float`, defaults to `120`):
            Ages above this are treated as invalid (missing) and counted.
        fair_epsilon (`float`, defaults to `1e-6`):
            Floor on the product of the domain and group temperatures (eq. 2).
        fair_norm_epsilon (`float`, defaults to `1e-6`):
            Added to each prompt's reward std in the within-prompt normalisation.
        cluster_max_k (`int`, defaults to `3`):
            Most latent groups k-means may find per domain among prompts with unknown demographics.
        cluster_elbow_threshold (`float`, defaults to `0.1`):
            Elbow rule: add a cluster while it removes at least this fraction of the previous step's inertia drop.
        cluster_pool_size (`int`, defaults to `1024`):
            Most recent unlabeled prompts per domain that clustering sees; bounds the estimator's state.
        fairness_logging_steps (`int`, defaults to `5`):
            Every this many optimizer steps, log the fairness metrics (per demographic column) of the training
            rollouts since the last such log through `report_to`. `0` turns it off.
        balanced_sampling (`bool`, defaults to `False`):
            Draw training prompts with probability 1 / count of their (domain, demographic group), with
            replacement, so every cell is equally frequent (GRPO + Resampling).
        dro_step_size (`float`, defaults to `0.01`):
            Group DRO's exponentiated-gradient step size for the group weights.
        solution_column (`str`, defaults to `"solution"`):
            Dataset column holding the reference label(s) the fairness metrics compare answers against.
    """

    advantage_estimator: str = field(
        default="fair_grpo",
        metadata={
            "help": "Advantage estimator: 'grpo' (TRL's group normalisation), 'fair_grpo' (FairGRPO), "
            "'fair_grpo_nd' (FairGRPO without demographics: groups are discovered by clustering), 'rloo', "
            "'reinforce_pp' or 'group_dro' (the paper's baselines).",
            "choices": list(ADVANTAGE_ESTIMATORS),
        },
    )
    domain_column: str | None = field(
        default="dataset",
        metadata={"help": "Dataset column naming each row's domain. None puts every row in one domain."},
    )
    demographic_columns: list[str] = field(
        default_factory=lambda: ["sex", "age"],
        metadata={"help": "Dataset columns whose values, intersected, form a row's demographic group."},
    )
    age_bins: list[float] = field(
        default_factory=lambda: [25, 50, 75],
        metadata={"help": "Upper bounds of the age bins a1, a2, ...; older ages form the last bin."},
    )
    max_age: float = field(
        default=120, metadata={"help": "Ages above this are invalid: treated as missing and counted."}
    )
    fair_epsilon: float = field(
        default=1e-6, metadata={"help": "Floor on the product of domain and group temperatures (eq. 2)."}
    )
    fair_norm_epsilon: float = field(
        default=1e-6, metadata={"help": "Added to each prompt's reward std in the within-prompt normalisation."}
    )
    cluster_max_k: int = field(
        default=3, metadata={"help": "Most latent groups per domain that k-means may find (elbow-chosen)."}
    )
    cluster_elbow_threshold: float = field(
        default=0.1,
        metadata={"help": "Elbow rule: add a cluster while it removes at least this fraction of the last drop."},
    )
    cluster_pool_size: int = field(
        default=1024,
        metadata={"help": "Most recent unlabeled prompts per domain that clustering sees (bounds state)."},
    )

    fair_reward_floor: float = field(
        default=0.0,
        metadata={
            "help": "Variant (0 = the paper): floor on the mean reward in each temperature T = sqrt(N) * rbar, so a "
            "group the model almost always fails cannot take over the batch."
        },
    )
    fair_max_weight_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Variant (None = the paper): no prompt's FairGRPO weight exceeds this many times the smallest "
            "weight in its batch."
        },
    )
    fair_stats_window: int | None = field(
        default=None,
        metadata={
            "help": "Variant (None = the paper, cumulative): temperatures count only the prompts of the last this "
            "many steps."
        },
    )

    fairness_logging_steps: int = field(
        default=5,
        metadata={
            "help": "Log the fairness metrics of the training rollouts every this many steps (0: off); "
            "trainer.evaluate() reports them with the eval_ prefix."
        },
    )
    balanced_sampling: bool = field(
        default=False,
        metadata={"help": "Resample prompts so every (domain, demographic group) is equally frequent (Resampling)."},
    )
    sampling_weight_column: str | None = field(
        default=None,
        metadata={
            "help": "Dataset column of non-negative weights: draw prompts with probability proportional to it, with "
            "replacement (e.g. to oversample chosen groups). Excludes balanced_sampling."
        },
    )
    dro_step_size: float = field(
        default=0.01, metadata={"help": "Group DRO step size for the exponentiated-gradient group weights."}
    )
    solution_column: str = field(
        default="solution",
        metadata={"help": "Dataset column with the reference label(s) for the fairness metrics."},
    )

    def __post_init__(self) -> None:
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"advantage_estimator={self.advantage_estimator!r} is not one of {list(ADVANTAGE_ESTIMATORS)}"
            )
        if isinstance(self.demographic_columns, str):
            self.demographic_columns = [self.demographic_columns]
        self.demographic_columns = list(self.demographic_columns)
        if not self.dro_step_size >= 0:
            raise ValueError(f"dro_step_size must be >= 0, got {self.dro_step_size}")
        if not 0 <= self.fair_reward_floor <= 1:
            raise ValueError(f"fair_reward_floor must be in [0, 1], got {self.fair_reward_floor}")
        if self.fair_max_weight_ratio is not None and not self.fair_max_weight_ratio >= 1:
            raise ValueError(f"fair_max_weight_ratio must be >= 1 (or None), got {self.fair_max_weight_ratio}")
        if self.fair_stats_window is not None and self.fair_stats_window < 1:
            raise ValueError(f"fair_stats_window must be >= 1 (or None), got {self.fair_stats_window}")
        if self.balanced_sampling and self.sampling_weight_column:
            raise ValueError("balanced_sampling and sampling_weight_column both choose the sampler; set only one")
        if self.fairness_logging_steps < 0:
            raise ValueError(f"fairness_logging_steps must be >= 0, got {self.fairness_logging_steps}")
        self.age_bins = [float(b) for b in self.age_bins]
        # Fail on a bad bin list or column name now, not on the first batch.
        GroupKeyer(self.demographic_columns, self.age_bins, self.max_age)
        if self.advantage_estimator != "grpo" and self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"advantage_estimator={self.advantage_estimator!r} needs multi_objective_aggregation="
                f"'sum_then_normalize' (got {self.multi_objective_aggregation!r}): it works on each completion's "
                "summed reward"
            )
        super().__post_init__()
