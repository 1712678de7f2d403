"""What a training run's model card says of it: the `ModelCardRecord` the trainer hands `fair_trl.model_card`.

Read from the run's config, model, train data and results: the base model (under a PEFT adapter too), the
sampler, the estimator's active variants, the train dataset's domains, and the fairness results, those of
the last evaluation unless an audit of the final model was given (`TrainingCard.use_audit`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from fair_trl.advantages import EstimatorSpec
from fair_trl.model_card import (
    BALANCED_SAMPLER,
    GUIDED_SAMPLER,
    WEIGHTED_SAMPLER_PREFIX,
    ModelCardRecord,
    adapter_settings,
    card_hyperparameters,
)

__all__ = ["TrainingCard"]


class TrainingCard:
    """The model card record of a run, and the audit that replaces its last evaluation's fairness when given."""

    def __init__(self) -> None:
        # When set, the card reports this audit of the final model instead of the last evaluation's sampled
        # rollouts, so the card's numbers are those `fair-trl audit` reproduces.
        self.audit: dict[str, Any] | None = None

    def use_audit(
        self,
        fairness: dict[str, dict[str, Any]],
        figures: list[tuple[str, str]] | None = None,
        note: str | None = None,
    ) -> None:
        """Report `fairness` ({attribute: `compute_fairness` output}, e.g. an audit's) with its `figures`
        ((caption, path relative to output_dir)) and `note` (how to reproduce it)."""
        self.audit = {"fairness": fairness, "figures": list(figures or []), "note": note}

    def record(
        self,
        args: Any,
        model: Any,
        train_dataset: Any,
        spec: EstimatorSpec,
        *,
        trained_steps: int,
        hub_model_id: str | None,
        eval_fairness: dict[str, dict[str, Any]],
        dataset_names: str | list[str] | None,
        model_name: str | None = None,
        tags: str | list[str] | None = None,
        eval_split: str | None = "test",
    ) -> ModelCardRecord:
        """The record of a run under `args` (its `FairGRPOConfig`) with estimator `spec`, trained `trained_steps`.

        `eval_fairness`: the last evaluation's results, reported unless `use_audit` was called. The domains
        are counted from the train dataset's domain column when it has one.
        """
        column = args.domain_column
        domains = None
        if column and train_dataset is not None and column in (getattr(train_dataset, "column_names", None) or ()):
            domains = dict(Counter(str(v) for v in train_dataset[column]))
        audit = self.audit
        return ModelCardRecord.build(
            base_model=_base_model_id(model),
            method=args.advantage_estimator,
            sampler=_sampler_of(args),
            variants=spec.active_variants(args),
            dataset_names=dataset_names,
            domains=domains,
            hyperparameters=card_hyperparameters(args),
            fairness=audit["fairness"] if audit else eval_fairness,
            model_name=model_name,
            output_dir=args.output_dir,
            hub_model_id=hub_model_id,
            tags=tags,
            eval_split=eval_split,
            trained_steps=trained_steps,
            figures=audit["figures"] if audit else (),
            evaluation_note=audit["note"] if audit else None,
            adapter=adapter_settings(model),
        )


def _sampler_of(args: Any) -> str | None:
    if getattr(args, "guided_sampling", False):
        return GUIDED_SAMPLER
    if args.balanced_sampling:
        return BALANCED_SAMPLER
    if args.sampling_weight_column:
        return WEIGHTED_SAMPLER_PREFIX + args.sampling_weight_column
    return None


def _base_model_id(model: Any) -> str:
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, Mapping) and peft_config:
        name = next(iter(peft_config.values())).base_model_name_or_path
        if name:
            return str(name)
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or "unknown")
