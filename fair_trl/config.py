"""`FairGRPOConfig`: TRL's `GRPOConfig` plus the fields FairGRPO needs, documented like TRL's own."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

from trl import GRPOConfig

from fair_trl.advantages import REGISTRY, SCALE_REWARDS, get_spec, scale_rewards_choices, stats_window_batches
from fair_trl.groups import AUTO, DEFAULT_DEMOGRAPHIC_COLUMNS, GroupKeyer, is_auto, parse_column
from fair_trl.labels import read_label_sets


@dataclass
class FairGRPOConfig(GRPOConfig):
    r"""
    Configuration for [`FairGRPOTrainer`]: every [`~trl.GRPOConfig`] field, plus the ones below. Each entry here
    is the field's `help` text, word for word.

    Parameters:
        > Parameters that choose the method

        advantage_estimator (`str`, defaults to `"fair_grpo"`):
            Advantage estimator: a name in fair_trl.advantages.REGISTRY. Built in: 'grpo' (TRL's group
            normalisation), 'fair_grpo' (FairGRPO), 'fair_grpo_nd' (FairGRPO without demographics: groups are
            discovered by clustering), and the paper's baselines 'rloo', 'reinforce_pp' and 'group_dro'. GRPO +
            Resampling is 'grpo' with balanced_sampling.
        scale_rewards (`str` or `None`, defaults to `None`):
            TRL's reward scaling ('group', 'batch' or 'none'), applied by the estimator that implements it. None
            (default): the estimator's own, 'group' for grpo, group_dro, fair_grpo and fair_grpo_nd, 'none' for
            rloo, 'batch' for reinforce_pp. A value the estimator does not implement is refused.

        > Parameters that define domains and demographic groups

        domain_column (`str` or `None`, defaults to `"auto"`):
            Dataset column naming each row's domain. 'auto': 'dataset' when the train dataset has it, else one
            domain (with a warning). None puts every row in one domain. A column named here must exist.
        demographic_columns (`list[str]`, defaults to `["auto"]`):
            Dataset columns whose values, intersected, form a row's demographic group: 'name' (its kind from the
            name) or 'name:kind' with kind age, sex or category (e.g. 'PatientAge:age'). ['auto']: 'sex' and
            'age', those the train dataset has (with a warning naming the others; none: every prompt in latent
            groups, as FairGRPO-ND). Empty: no groups. A column named here must exist. The kinds move to
            demographic_kinds.
        demographic_kinds (`dict[str, str]` or `None`, defaults to `None`):
            Kind (age, sex or category) of demographic columns, {column: kind}; filled from the 'name:kind'
            entries of demographic_columns.
        age_bins (`list[float]`, defaults to `[25, 50, 75]`):
            Upper bounds of the age bins a1, a2, ...; older ages form the last bin.
        max_age (`float`, defaults to `120`):
            Ages above this are invalid: treated as missing and counted.

        > Parameters of FairGRPO ('fair_grpo' and 'fair_grpo_nd')

        fair_epsilon (`float`, defaults to `1e-6`):
            Floor on the product of domain and group temperatures (eq. 2).
        fair_norm_epsilon (`float`, defaults to `1e-6`):
            Added to each prompt's reward std in the within-prompt normalisation.
        cluster_max_k (`int`, defaults to `3`):
            Most latent groups per domain that k-means may find (elbow-chosen).
        cluster_elbow_threshold (`float`, defaults to `0.1`):
            Elbow rule: add a cluster while it removes at least this fraction of the last drop.
        cluster_pool_size (`int`, defaults to `1024`):
            Most recent unlabeled prompts per domain that clustering sees (bounds state).
        fair_reward_min (`float` or `None`, defaults to `None`):
            Lowest reward the reward functions can give: temperatures T = sqrt(N) * (rbar - fair_reward_min)
            measure the mean reward from it, so T is never negative. A reward below it is refused. None (default):
            the lowest reward seen so far, 0 until a reward below 0 arrives (the paper's rewards in [0, 1] are
            measured from 0; a reward model's scores from the lowest one seen).

        > FairGRPO variants (off by default, which is the paper's method)

        fair_reward_floor (`float`, defaults to `0.0`):
            Variant (0 = the paper): floor on the mean reward in each temperature T = sqrt(N) * rbar, so a group
            the model almost always fails cannot take over the batch.
        fair_max_weight_ratio (`float` or `None`, defaults to `None`):
            Variant (None = the paper): no prompt's FairGRPO weight exceeds this many times the smallest weight in
            its batch.
        fair_stats_window (`int` or `None`, defaults to `None`):
            Variant (None = the paper, cumulative): temperatures count only the prompts of the last this many
            optimizer steps (a whole number of generation batches).

        > Parameters of the baselines

        dro_step_size (`float`, defaults to `0.01`):
            Group DRO step size for the exponentiated-gradient group weights.

        > Parameters that control prompt sampling

        balanced_sampling (`bool`, defaults to `False`):
            Resample prompts so every (domain, demographic group) is equally frequent (Resampling).
        sampling_weight_column (`str` or `None`, defaults to `None`):
            Dataset column of non-negative weights: draw prompts with probability proportional to it, with
            replacement (e.g. to oversample chosen groups). Excludes balanced_sampling.
        guided_sampling (`bool`, defaults to `False`):
            Beyond the paper: draw each generation batch's prompts with replacement, with probability proportional
            to the FairGRPO weight 1 / (T_domain * T_group) of the row's (domain, demographic group), from the
            running statistics of the rewards so far (the fair_* fields apply). Works with any
            advantage_estimator; excludes balanced_sampling and sampling_weight_column.

        > Parameters that control the fairness log

        fairness_logging_steps (`int`, defaults to `5`):
            Log the fairness metrics of the training rollouts every this many steps (0: off); trainer.evaluate()
            reports them with the eval_ prefix.
        solution_column (`str`, defaults to `"solution"`):
            Dataset column with the reference label(s) for the fairness metrics and accuracy_reward.
        label_sets (`dict[str, list[str]]` or `None`, defaults to `None`):
            Labels each domain may answer, {domain: [label, ...]} (or that mapping as JSON, or a .json/.yaml
            file of it): accuracy_reward scores an answer naming a label outside its domain's set 0. The paper's
            seven datasets have theirs built in.
    """

    # The fields each estimator reads, said once, here (its registry entry and the model card read it), and
    # those of them that switch on a documented departure from the paper. Not field metadata: TRL's parser
    # hands every metadata key to argparse. A config subclass adds its own estimator's fields.
    estimator_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        name: (
            "fair_epsilon",
            "fair_norm_epsilon",
            "cluster_max_k",
            "cluster_elbow_threshold",
            "cluster_pool_size",
            "fair_reward_min",
            "fair_reward_floor",
            "fair_max_weight_ratio",
            "fair_stats_window",
        )
        for name in ("fair_grpo", "fair_grpo_nd")
    } | {"group_dro": ("dro_step_size",)}
    variant_fields: ClassVar[tuple[str, ...]] = ("fair_reward_floor", "fair_max_weight_ratio", "fair_stats_window")

    # Parameters that choose the method
    advantage_estimator: str = field(
        default="fair_grpo",
        metadata={
            "help": "Advantage estimator: a name in fair_trl.advantages.REGISTRY. Built in: 'grpo' (TRL's group "
            "normalisation), 'fair_grpo' (FairGRPO), 'fair_grpo_nd' (FairGRPO without demographics: groups are "
            "discovered by clustering), and the paper's baselines 'rloo', 'reinforce_pp' and 'group_dro'. GRPO + "
            "Resampling is 'grpo' with balanced_sampling."
        },
    )
    # TRL's field with another default: left unset, each estimator scales as its method defines.
    scale_rewards: str | None = field(
        default=None,
        metadata={
            "help": "TRL's reward scaling ('group', 'batch' or 'none'), applied by the estimator that implements it. "
            "None (default): the estimator's own, 'group' for grpo, group_dro, fair_grpo and fair_grpo_nd, 'none' "
            "for rloo, 'batch' for reinforce_pp. A value the estimator does not implement is refused."
        },
    )

    # Parameters that define domains and demographic groups
    # The AUTO defaults are resolved against the train dataset by the trainer (fair_trl.inspection.resolve_columns),
    # which writes the columns it uses into its args.
    domain_column: str | None = field(
        default=AUTO,
        metadata={
            "help": "Dataset column naming each row's domain. 'auto': 'dataset' when the train dataset has it, else "
            "one domain (with a warning). None puts every row in one domain. A column named here must exist."
        },
    )
    demographic_columns: list[str] = field(
        default_factory=lambda: [AUTO],
        metadata={
            "help": "Dataset columns whose values, intersected, form a row's demographic group: 'name' (its kind "
            "from the name) or 'name:kind' with kind age, sex or category (e.g. 'PatientAge:age'). ['auto']: 'sex' "
            "and 'age', those the train dataset has (with a warning naming the others; none: every prompt in latent "
            "groups, as FairGRPO-ND). Empty: no groups. A column named here must exist. The kinds move to "
            "demographic_kinds."
        },
    )
    demographic_kinds: dict[str, str] | str | None = field(
        default=None,
        metadata={
            "help": "Kind (age, sex or category) of demographic columns, {column: kind}; filled from the "
            "'name:kind' entries of demographic_columns."
        },
    )
    age_bins: list[float] = field(
        default_factory=lambda: [25, 50, 75],
        metadata={"help": "Upper bounds of the age bins a1, a2, ...; older ages form the last bin."},
    )
    max_age: float = field(
        default=120, metadata={"help": "Ages above this are invalid: treated as missing and counted."}
    )

    # Parameters of FairGRPO
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

    fair_reward_min: float | None = field(
        default=None,
        metadata={
            "help": "Lowest reward the reward functions can give: temperatures T = sqrt(N) * (rbar - fair_reward_min) "
            "measure the mean reward from it, so T is never negative. A reward below it is refused. None (default): "
            "the lowest reward seen so far, 0 until a reward below 0 arrives (the paper's rewards in [0, 1] are "
            "measured from 0; a reward model's scores from the lowest one seen).",
        },
    )

    # FairGRPO variants
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
            "many optimizer steps (a whole number of generation batches)."
        },
    )

    # Parameters of the baselines
    dro_step_size: float = field(
        default=0.01, metadata={"help": "Group DRO step size for the exponentiated-gradient group weights."}
    )

    # Parameters that control prompt sampling
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
    guided_sampling: bool = field(
        default=False,
        metadata={
            "help": "Beyond the paper: draw each generation batch's prompts with replacement, with probability "
            "proportional to the FairGRPO weight 1 / (T_domain * T_group) of the row's (domain, demographic group), "
            "from the running statistics of the rewards so far (the fair_* fields apply). Works with any "
            "advantage_estimator; excludes balanced_sampling and sampling_weight_column."
        },
    )

    # Parameters that control the fairness log
    fairness_logging_steps: int = field(
        default=5,
        metadata={
            "help": "Log the fairness metrics of the training rollouts every this many steps (0: off); "
            "trainer.evaluate() reports them with the eval_ prefix."
        },
    )
    solution_column: str = field(
        default="solution",
        metadata={"help": "Dataset column with the reference label(s) for the fairness metrics and accuracy_reward."},
    )
    label_sets: dict[str, list[str]] | str | None = field(
        default=None,
        metadata={
            "help": "Labels each domain may answer, {domain: [label, ...]} (or that mapping as JSON, or a "
            ".json/.yaml file of it): accuracy_reward scores an answer naming a label outside its domain's set 0. "
            "The paper's seven datasets have theirs built in."
        },
    )

    def __post_init__(self) -> None:
        spec = get_spec(self.advantage_estimator)
        self._resolve_demographic_columns()
        self.label_sets = read_label_sets(self.label_sets)
        if not self.dro_step_size >= 0:
            raise ValueError(f"dro_step_size must be >= 0, got {self.dro_step_size}")
        if self.fair_reward_min is not None and not math.isfinite(self.fair_reward_min):
            raise ValueError(f"fair_reward_min must be a finite number or None, got {self.fair_reward_min}")
        if not 0 <= self.fair_reward_floor <= 1:
            raise ValueError(f"fair_reward_floor must be in [0, 1], got {self.fair_reward_floor}")
        if self.fair_max_weight_ratio is not None and not self.fair_max_weight_ratio >= 1:
            raise ValueError(f"fair_max_weight_ratio must be >= 1 (or None), got {self.fair_max_weight_ratio}")
        if self.fair_stats_window is not None and self.fair_stats_window < 1:
            raise ValueError(f"fair_stats_window must be >= 1 (or None), got {self.fair_stats_window}")
        chosen = self.sampler_settings()
        if len(chosen) > 1:
            raise ValueError(
                f"{' and '.join(chosen)} each choose the sampler; set only one (balanced_sampling draws every "
                "(domain, group) cell alike, sampling_weight_column by a column, guided_sampling by FairGRPO's "
                "weights of the moment)"
            )
        if self.fairness_logging_steps < 0:
            raise ValueError(f"fairness_logging_steps must be >= 0, got {self.fairness_logging_steps}")
        self.age_bins = [float(b) for b in self.age_bins]
        # Fail on a bad bin list now, not on the first batch.
        GroupKeyer.from_config(self)
        if not spec.keeps_trl_advantages and self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"advantage_estimator={self.advantage_estimator!r} needs multi_objective_aggregation="
                f"'sum_then_normalize' (got {self.multi_objective_aggregation!r}): it works on each completion's "
                "summed reward, while TRL's 'normalize_then_sum' normalises each reward function on its own before "
                f"summing. For TRL's {self.multi_objective_aggregation!r}, use advantage_estimator='grpo' (TRL's "
                "GRPO advantages)"
            )
        self._resolve_scale_rewards()
        super().__post_init__()
        # The window is counted in generation batches, which TRL's __post_init__ has just sized.
        stats_window_batches(self)

    def sampler_settings(self) -> list[str]:
        """The settings that choose the train sampler, as a user writes them (at most one may be set)."""
        chosen = {
            "balanced_sampling=True": self.balanced_sampling,
            f"sampling_weight_column={self.sampling_weight_column!r}": self.sampling_weight_column,
            "guided_sampling=True": self.guided_sampling,
        }
        return [name for name, on in chosen.items() if on]

    def _resolve_demographic_columns(self) -> None:
        """Names in demographic_columns, kinds in demographic_kinds: rows are read by name everywhere."""
        kinds = self.demographic_kinds
        if isinstance(kinds, str):
            kinds = json.loads(kinds) if kinds.strip() else None
        if kinds is not None and not isinstance(kinds, dict):
            raise ValueError(f"demographic_kinds must be a {{column: kind}} mapping, got {kinds!r}")
        columns = [self.demographic_columns] if isinstance(self.demographic_columns, str) else self.demographic_columns
        if is_auto(columns):
            # Resolved against the train dataset by the trainer; kinds may only be given for the default columns.
            keyer = GroupKeyer(DEFAULT_DEMOGRAPHIC_COLUMNS, kinds=kinds)
            self.demographic_columns = [AUTO]
            self.demographic_kinds = {c: keyer.kinds[c] for c in kinds} if kinds else None
            return
        if AUTO in columns:
            raise ValueError(
                f"demographic_columns={list(columns)!r}: 'auto' stands alone for the default columns (sex and age, "
                "those the train dataset has); to add others, list every column, e.g. ['sex', 'age', 'race']"
            )
        declared = dict(parse_column(c) for c in columns if isinstance(c, str) and ":" in c)
        for column, kind in (kinds or {}).items():
            if column in declared and declared[column] != kind:
                raise ValueError(
                    f"demographic column {column!r} is declared {declared[column]!r} in demographic_columns and "
                    f"{kind!r} in demographic_kinds; give one kind"
                )
        keyer = GroupKeyer(columns, kinds=kinds)
        self.demographic_columns = list(keyer.columns)
        explicit = set(declared) | set(kinds or ())
        self.demographic_kinds = {c: keyer.kinds[c] for c in keyer.columns if c in explicit} or None

    def _resolve_scale_rewards(self) -> None:
        choices = scale_rewards_choices(self.advantage_estimator)
        value = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if value is None:
            value = choices[0]
        elif value not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {list(SCALE_REWARDS)} or None, got {value!r}")
        elif value not in choices:
            reason = get_spec(self.advantage_estimator).scale_rewards_reason
            raise ValueError(
                f"advantage_estimator={self.advantage_estimator!r} implements scale_rewards={list(choices)} only, "
                f"got {value!r}: it would be ignored{f' ({reason})' if reason else ''}. Leave scale_rewards unset "
                f"(None) for the estimator's own; for TRL's scale_rewards={value!r}, use advantage_estimator='grpo' "
                "(TRL's GRPO advantages; group_dro implements all three values too)"
            )
        self.scale_rewards = value


__all__ = ["REGISTRY", "FairGRPOConfig"]
