"""`FairGRPOTrainer`: TRL's `GRPOTrainer` with its advantages replaced through one seam.

TRL 1.16 computes advantages inline in `_generate_and_score_completions`, with no hook. TRL's
maintainers advise subclassing that method and returning the same output with new advantages;
this module does that with the least code it can: it keeps the gathered per-function rewards TRL
already computed (`_calculate_rewards`), sums them exactly as TRL does, hands them to
`_compute_advantages`, and puts the result back into the output and into the completions table.
All advantage math lives in `fair_trl.advantages`.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from accelerate.utils import DistributedType, broadcast_object_list, gather_object
from datasets import IterableDataset as StreamingDataset
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import rotate_checkpoints
from trl import GRPOTrainer

from fair_trl.advantages import FairGRPOAdvantage, Stateful, get_spec, nanstd, zero_signal
from fair_trl.checkpoint_io import ESTIMATOR_STATE_FILE, GROUP_KEYER_STATE_FILE, CheckpointFiles, group_settings
from fair_trl.checkpoints import load_converted_weights
from fair_trl.config import FairGRPOConfig
from fair_trl.groups import GroupKeyer, domain_key
from fair_trl.inspection import dataset_column_names, fit_train_groups, resolve_columns
from fair_trl.model_card import (
    BALANCED_SAMPLER,
    WEIGHTED_SAMPLER_PREFIX,
    ModelCardRecord,
    adapter_settings,
    card_hyperparameters,
    write_model_card,
)
from fair_trl.rewards import completion_text, extract_answer, with_config_label_sets
from fair_trl.rollout_fairness import Rollout, fairness_results, flatten_results
from fair_trl.sampling import BalancedRepeatSampler, EpochRepeatSampler, balanced_weights, column_weights
from fair_trl.train_data_size import check_train_size
from fair_trl.vllm_compat import adapt_vllm_generation, to_vllm_checkpoint

logger = logging.getLogger(__name__)


class FairGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose advantages come from `FairGRPOConfig.advantage_estimator`.

    Takes exactly `GRPOTrainer`'s arguments; `args` must be a `FairGRPOConfig` (or None for defaults).
    The train dataset's domain and demographic columns (named in the config, or at its "auto" defaults
    those of `dataset`, `sex` and `age` the data has) reach each batch row because TRL keeps unused
    columns by default; `self.args` is a copy of `args` holding the columns used.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(GRPOTrainer.__init__).bind(self, *args, **kwargs)
        config = bound.arguments.get("args")
        if config is None:
            model = bound.arguments["model"]
            name = model if isinstance(model, str) else model.config._name_or_path
            config = FairGRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-FairGRPO")
        elif not isinstance(config, FairGRPOConfig):
            raise TypeError(f"FairGRPOTrainer needs args=FairGRPOConfig(...), got {type(config).__name__}")
        # self.args holds the columns this train dataset resolved; the caller's config keeps its settings, so it
        # can build another trainer on other data.
        config = copy.copy(config)
        bound.arguments["args"] = config
        self.estimator_spec = get_spec(config.advantage_estimator)
        self.estimator = self.estimator_spec.factory(config)

        # TRL's own argument checks run first, with TRL's messages; then the dataset's against the settings.
        super().__init__(*bound.args[1:], **bound.kwargs)
        _check_sampling(self.train_dataset, config)
        _resolve_columns(self.train_dataset, config, self.accelerator.is_main_process, self.fair_estimator is not None)
        self.reward_funcs = with_config_label_sets(self.reward_funcs, config)
        _check_launch(self.accelerator)
        check_train_size(self.train_dataset, self.args, self.num_generations, self.accelerator.num_processes)
        if getattr(self, "vllm_generation", None) is not None:
            adapt_vllm_generation(self.vllm_generation, self._model_type())

        self.group_keyer = GroupKeyer.from_config(config)
        self.checkpoint_files = CheckpointFiles(group_settings(config, self.estimator_spec.config_fields(config)))

        # Fitted on the train rows (which columns each domain records, where partly known rows go); the
        # table of groups is logged now, and put in W&B when training begins.
        group_table = fit_train_groups(self.group_keyer, self.train_dataset, config)
        if group_table is not None:
            self.add_callback(group_table)
        # Whether the batch being scored started in training or evaluation (see _generate_and_score_completions).
        self._scoring_mode = "train"
        # The checkpointed states as they were when the current generation batch began, kept only when a
        # checkpoint can fall inside a generation batch (see _save_checkpoint).
        self._generation_start: dict[str, Any] | None = None
        # The train dataloader's sampler, whose epoch _run_epoch sets.
        self._train_sampler: Any = None
        # Evaluation rollouts gathered so far in this evaluation and how many the eval sampler really holds.
        self._eval_position = 0
        self._eval_total: int | None = None
        self._last_rewards_per_func: torch.Tensor | None = None
        # Rollouts scored since the last fairness log, per mode; a keyer of their own keeps the
        # estimator's missing/invalid counts from being counted twice, sharing its warnings.
        self._rollouts: dict[str, list[Rollout]] = {"train": [], "eval": []}
        self._fairness_keyer = self.group_keyer.sibling()
        self._fairness_logged_step = -1
        self._warned_nonfinite: set[str] = set()
        # The latest full `compute_fairness` output per attribute, per mode (e.g. for a model card).
        self.fairness_results: dict[str, dict[str, Any]] = {"train": {}, "eval": {}}
        # An audit of the final model (`use_audit_for_card`): when set, the card reports it instead of the
        # last evaluation's sampled rollouts, so the card's numbers are those `fair-trl audit` reproduces.
        self._card_audit: dict[str, Any] | None = None

    @property
    def fair_estimator(self) -> FairGRPOAdvantage | None:
        """The FairGRPO estimator (its running statistics), None under another advantage_estimator."""
        return self.estimator if isinstance(self.estimator, FairGRPOAdvantage) else None

    # -- the seam -------------------------------------------------------------------------------

    def _compute_advantages(self, rewards: torch.Tensor, inputs: list[dict[str, Any]]) -> torch.Tensor:
        """Advantages of every completion in the global batch, in the order of `rewards`.

        `rewards`: the summed reward of each completion, gathered from all processes (NaN where no
        reward function could score it). `inputs`: this process's rows. The caller slices its part.
        """
        if not self.estimator.needs_groups:
            return self.estimator(rewards, self.num_generations, None, None)
        domains, groups = self._gather_group_metadata(inputs)
        advantages = self.estimator(rewards, self.num_generations, domains, groups)
        self._log_estimator_step(groups)
        return advantages

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Kept so `_generate_and_score_completions` can rebuild the rewards TRL normalised.
        self._last_rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._record_rollouts(inputs, completions)
        return self._last_rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        # TRL's continuous-batching generation calls model.train() even while evaluating: what this batch is
        # (and what evaluation goes on in afterwards) is the mode it started in.
        training = self.model.training
        self._scoring_mode = "train" if training else "eval"
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            if self.model.training != training:
                self.model.train(training)
        self._log_scorable_rewards(self._scoring_mode)
        # Evaluation batches keep TRL's advantages: they train nothing and must not move the
        # estimator's running statistics. An estimator that reproduces TRL's advantages leaves them alone
        # when TRL normalises per reward function, which it alone implements.
        if not training or (
            self.estimator_spec.keeps_trl_advantages and self.multi_objective_aggregation != "sum_then_normalize"
        ):
            return output
        rewards = self._summed_rewards()
        # TRL's frac_reward_zero_std is one whole-batch figure under scale_rewards="batch"; this is per prompt.
        no_signal = zero_signal(rewards, self.num_generations)
        self._metrics["train"]["fair/frac_zero_signal"].append(no_signal.float().mean().item())
        if self._checkpoints_can_split_generation_batches():
            self._generation_start = self._checkpointed_states()
        advantages = self._compute_advantages(rewards, inputs).to(rewards.device)
        start = self.accelerator.process_index * len(inputs)
        output["advantages"] = advantages[start : start + len(inputs)]
        self._replace_logged_advantages(advantages.tolist())
        return output

    def _summed_rewards(self) -> torch.Tensor:
        """The same weighted sum TRL's "sum_then_normalize" path forms, NaN for unscorable rows.

        A completion with an infinite reward from any reward function is unscorable (NaN), whatever the
        others returned: it would otherwise zero the whole batch's advantages and the running statistics
        of its domain for good, and summing the other functions alone would score it on part of its
        reward. It is counted in ``fair/nonfinite_rewards`` and warned about once per reward function.
        """
        per_func = self._last_rewards_per_func
        assert per_func is not None, "_calculate_rewards did not run"
        infinite = torch.isinf(per_func)
        for i in torch.nonzero(infinite.any(dim=0)).flatten().tolist():
            name = self.reward_func_names[i]
            if name not in self._warned_nonfinite:
                self._warned_nonfinite.add(name)
                logger.warning(
                    "Reward function %r returned inf for some completions; they are treated as unscorable "
                    "(advantage 0) whatever the other reward functions returned. Further ones are only counted in "
                    "fair/nonfinite_rewards.",
                    name,
                )
        self._metrics["train"]["fair/nonfinite_rewards"].append(float(infinite.any(dim=1).sum()))
        return self._scorable_sum(per_func)

    def _scorable_sum(self, per_func: torch.Tensor) -> torch.Tensor:
        per_func = per_func.masked_fill(torch.isinf(per_func).any(dim=1, keepdim=True), torch.nan)
        unscorable = torch.isnan(per_func).all(dim=1)
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        return rewards

    def _log_scorable_rewards(self, mode: str) -> None:
        """Replace the reward figures TRL just logged for this batch when an infinite reward made them inf or NaN.

        ``reward`` and ``reward_std`` then leave out the unscorable completions, as training does; each
        ``rewards/<function>/*`` leaves out that function's infinite values.
        """
        per_func = self._last_rewards_per_func
        if per_func is None or not torch.isinf(per_func).any():
            return
        metrics = self._metrics[mode]
        finite = per_func.masked_fill(torch.isinf(per_func), torch.nan)
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"][-1] = torch.nanmean(finite[:, i]).item()
            metrics[f"rewards/{name}/std"][-1] = nanstd(finite[:, i]).item()
        rewards = self._scorable_sum(per_func)
        metrics["reward"][-1] = torch.nanmean(rewards).item()
        metrics["reward_std"][-1] = nanstd(rewards).item()

    def _replace_logged_advantages(self, advantages: list[float]) -> None:
        # TRL appended its own advantages for this batch to the completions table before we replaced
        # them; overwrite that tail so the table shows what is trained on.
        logged = self._logs["advantages"]
        count = min(len(logged), len(advantages))
        for i in range(1, count + 1):
            logged[-i] = advantages[-i]

    # -- group metadata -------------------------------------------------------------------------

    def _gather_group_metadata(self, inputs: list[dict[str, Any]]) -> tuple[list[str], list[str | None]]:
        """Per-completion domains and group keys of the global batch, identical on every rank."""
        domain_column = self.args.domain_column
        local = [
            (domain_key(row, domain_column), {c: row.get(c) for c in self.args.demographic_columns}) for row in inputs
        ]
        # Raw values are gathered and keyed on every rank, so keys and invalid-value counts agree.
        # Each prompt's G completions are contiguous copies of one row: key (and count) it once.
        rows = gather_object(local)
        g = self.num_generations
        domains = [domain for domain, _ in rows]
        prompt_groups = self.group_keyer.keys((demographics for _, demographics in rows[::g]), domains[::g])
        return domains, [group for group in prompt_groups for _ in range(g)]

    def _log_estimator_step(self, groups: list[str | None]) -> None:
        info = self.estimator.last_info
        metrics = self._metrics["train"]
        prefix = self.estimator.metric_prefix
        for key, weight in info.get("weight", {}).items():
            metrics[f"{prefix}/weight/{key}"].append(weight)
        if "num_clusters" in info:
            metrics["fair/num_clusters"].append(float(info["num_clusters"]))
        metrics["fair/unknown_group_frac"].append(sum(g is None for g in groups) / max(len(groups), 1))
        summary = self.group_keyer.summary()
        metrics["fair/invalid_demographics"].append(float(sum(summary["invalid"].values())))

    # -- sampling -------------------------------------------------------------------------------

    def _get_train_sampler(self, dataset=None):
        self._train_sampler = self._build_train_sampler(dataset if dataset is not None else self.train_dataset)
        return self._train_sampler

    def _build_train_sampler(self, dataset):
        if not (self.args.balanced_sampling or self.args.sampling_weight_column):
            # TRL's own sampler, as TRL builds it, but one that can be put at any epoch's order.
            return EpochRepeatSampler(
                data_source=dataset,
                mini_repeat_count=self.num_generations,
                batch_size=self.args.generation_batch_size // self.num_generations,
                repeat_count=self.num_iterations * self.args.steps_per_generation,
                shuffle=self.shuffle_dataset,
                seed=self.args.seed,
            )
        if self.args.sampling_weight_column:
            weights = column_weights(dataset, self.args.sampling_weight_column)
        else:
            # Only the metadata columns: images are never decoded to compute the weights.
            columns = [c for c in [self.args.domain_column, *self.args.demographic_columns] if c]
            # No domain or demographic column (data without them): one cell, every row drawn alike.
            rows = dataset.select_columns(columns).to_list() if columns else [{}] * len(dataset)
            keyer = self.group_keyer.sibling()
            domains = [domain_key(r, self.args.domain_column) for r in rows]
            weights = balanced_weights(domains, keyer.keys(rows, domains))
        return BalancedRepeatSampler(
            weights,
            data_source=dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=True,
            seed=self.args.seed,
        )

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        # A run resumed in a later epoch must draw that epoch's order, not the first epoch's. accelerate
        # forwards set_epoch to the sampler through some of its wrappers only (not through the one that
        # skips the trained batches of a multi-process resume), so the epoch is set here too.
        epoch = kwargs.get("epoch")
        if epoch is not None and hasattr(self._train_sampler, "set_epoch"):
            self._train_sampler.set_epoch(epoch)
        return super()._run_epoch(*args, **kwargs)

    # -- fairness logging -----------------------------------------------------------------------

    def _record_rollouts(self, inputs: list[dict[str, Any]], completions: list[Any]) -> None:
        mode = self._scoring_mode
        if not self.args.demographic_columns or (mode == "train" and self.args.fairness_logging_steps <= 0):
            return  # nothing would ever log (and clear) the buffer
        rollouts = [self._rollout(row, completion) for row, completion in zip(inputs, completions, strict=True)]
        if mode == "eval":
            # Gathered batch by batch, in the eval sampler's order: with several processes accelerate pads the
            # last batches with copies of the first rows (even_batches), and those come after every real row.
            rollouts = gather_object(rollouts)
            start, self._eval_position = self._eval_position, self._eval_position + len(rollouts)
            if self._eval_total is not None:
                rollouts = rollouts[: max(self._eval_total - start, 0)]
        self._rollouts[mode].extend(r for r in rollouts if r is not None)

    def _rollout(self, row: dict[str, Any], completion: Any) -> Rollout | None:
        reference = row.get(self.args.solution_column)
        if reference is None:
            return None
        groups = {c: self._fairness_keyer.attribute(c, row.get(c)) for c in self.args.demographic_columns}
        answer = extract_answer(completion_text(completion))
        return Rollout(answer, str(reference), domain_key(row, self.args.domain_column), groups)

    def _fairness_logs(self, mode: str) -> dict[str, float]:
        """The fairness metrics of every process's rollouts since the last call; clears the buffer."""
        # Evaluation rollouts were gathered batch by batch (_record_rollouts); training ones are gathered here.
        rollouts = self._rollouts[mode] if mode == "eval" else gather_object(self._rollouts[mode])
        self._rollouts[mode] = []
        results = fairness_results(rollouts, self.args.demographic_columns)
        if results:
            self.fairness_results[mode] = results
        return flatten_results(results)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        dataloader = super().get_eval_dataloader(eval_dataset)
        self._eval_position = 0
        self._eval_total = _sampler_length(dataloader)
        return dataloader

    def _maybe_log_save_evaluate(self, *args: Any, **kwargs: Any) -> None:
        # Right after each optimizer step (and once more at an epoch's end, at the same step): the
        # trainer schedules its own fairness log, so no callback has to hold the trainer.
        steps = self.args.fairness_logging_steps
        step = self.state.global_step
        if steps > 0 and self.args.demographic_columns and step % steps == 0 and step != self._fairness_logged_step:
            self._fairness_logged_step = step
            self.log_fairness()
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def log_fairness(self) -> None:
        """Log the fairness of the training rollouts since the last call (every process must call it)."""
        logs = self._fairness_logs("train")
        if logs:
            # The base Trainer.log: TRL's own would flush its step metrics early, off its logging_steps.
            # Its on_log resets control.should_log, which would drop this step's regular log: keep it.
            should_log = self.control.should_log
            super(GRPOTrainer, self).log(logs)
            self.control.should_log = should_log

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        self._rollouts["eval"] = []
        return super().evaluate(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if not self.model.training and self.args.demographic_columns:
            # TRL averages these and prefixes them with "eval_" like its other evaluation metrics.
            for key, value in self._fairness_logs("eval").items():
                self._metrics["eval"][key] = [value]
        super().log(logs, start_time)

    # -- publishing -----------------------------------------------------------------------------

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """The fairness model card (fair_trl.model_card) instead of TRL's; `push_to_hub` uploads it."""
        if self.is_world_process_zero():
            self.write_model_card(dataset_name, model_name=model_name, tags=tags)

    def write_model_card(
        self,
        dataset_names: str | list[str] | None = None,
        *,
        model_name: str | None = None,
        tags: str | list[str] | None = None,
        eval_split: str | None = "test",
    ) -> str:
        """Write ``<output_dir>/README.md``: the card of `model_card_record`; returns its path."""
        record = self.model_card_record(dataset_names, model_name=model_name, tags=tags, eval_split=eval_split)
        return write_model_card(record, self.args.output_dir)

    def use_audit_for_card(
        self,
        fairness: dict[str, dict[str, Any]],
        figures: list[tuple[str, str]] | None = None,
        note: str | None = None,
    ) -> None:
        """Make the model card report `fairness` ({attribute: `compute_fairness` output}, e.g. an audit's) with
        its `figures` ((caption, path relative to output_dir)) and `note` (how to reproduce it)."""
        self._card_audit = {"fairness": fairness, "figures": list(figures or []), "note": note}

    def model_card_record(
        self,
        dataset_names: str | list[str] | None = None,
        *,
        model_name: str | None = None,
        tags: str | list[str] | None = None,
        eval_split: str | None = "test",
    ) -> ModelCardRecord:
        """What the model card says of this run: method, hyperparameters, data and the last eval's fairness.

        `dataset_names`: what the model was trained on (a Hub id goes into the card's metadata); by
        default the train dataset's domains. The fairness results are those of `use_audit_for_card` when it
        was called (the recipe's final audit), else `fairness_results["eval"]`, which `evaluate()` fills.
        """
        args = self.args
        column = args.domain_column
        train = self.train_dataset
        domains = None
        if column and train is not None and column in (getattr(train, "column_names", None) or ()):
            domains = dict(Counter(str(v) for v in train[column]))
        # The repository's full id once `push_to_hub` created it; before that, args.hub_model_id.
        hub_model_id = getattr(self, "hub_model_id", None) or args.hub_model_id
        audit = self._card_audit
        return ModelCardRecord.build(
            base_model=_base_model_id(self.model),
            method=args.advantage_estimator,
            sampler=_sampler_of(args),
            variants=self.estimator_spec.active_variants(args),
            dataset_names=dataset_names,
            domains=domains,
            hyperparameters=card_hyperparameters(args),
            fairness=audit["fairness"] if audit else self.fairness_results.get("eval") or {},
            model_name=model_name,
            output_dir=args.output_dir,
            hub_model_id=hub_model_id,
            tags=tags,
            eval_split=eval_split,
            trained_steps=self.state.global_step,
            figures=audit["figures"] if audit else (),
            evaluation_note=audit["note"] if audit else None,
            adapter=adapter_settings(self.model),
        )

    # -- checkpoints ----------------------------------------------------------------------------

    def _model_type(self) -> str | None:
        return getattr(getattr(self.accelerator.unwrap_model(self.model), "config", None), "model_type", None)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        # Weights under the names vLLM's loaders read (transformers reads both), so the saved or pushed
        # model can be served with vLLM. Checkpoints keep transformers' names: resuming reads them raw.
        if self.args.should_save and not self._saving_checkpoint:
            to_vllm_checkpoint(output_dir or self.args.output_dir, self._model_type())

    _saving_checkpoint = False

    def _checkpoints_can_split_generation_batches(self) -> bool:
        # Checkpoints fall on optimizer steps; TRL generates every steps_per_generation * num_iterations
        # micro-batches, so unless an optimizer step is a whole number of generation batches, some do.
        return self.args.gradient_accumulation_steps % (self.args.steps_per_generation * self.num_iterations) != 0

    def _checkpointed_states(self) -> dict[str, Any]:
        states = {GROUP_KEYER_STATE_FILE: self.group_keyer.state_dict()}
        if isinstance(self.estimator, Stateful):
            states[ESTIMATOR_STATE_FILE] = self.estimator.state_dict()
        return states

    def _get_output_dir(self, trial):
        # While a checkpoint is written, transformers' run folder is its staging folder (fair_trl.checkpoint_io).
        return self._checkpoint_staging or super()._get_output_dir(trial)

    _checkpoint_staging: str | None = None

    def _save_checkpoint(self, model, trial):
        run_dir, step = self._get_output_dir(trial=trial), self.state.global_step
        staging = self.checkpoint_files.staging_dir(run_dir, step)
        if self.args.should_save:
            folder = self.checkpoint_files.begin(run_dir, step)
            states = self._checkpointed_states()
            inside_generation_batch = self._step % (self.args.steps_per_generation * self.num_iterations) != 0
            if inside_generation_batch and self._generation_start is not None:
                # TRL checkpoints no generation buffer, so a resume from here generates this batch again and
                # the estimator sees it a second time: the checkpoint holds the states from before it.
                states = self._generation_start
            self.checkpoint_files.write_states(folder, states)
        self.accelerator.wait_for_everyone()  # the staging folder exists before any process writes into it
        self._checkpoint_staging, self._saving_checkpoint = staging, True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_staging, self._saving_checkpoint = None, False
        best = self.state.best_model_checkpoint
        if best and os.path.dirname(best) == staging:  # transformers saw the best checkpoint's staged path
            self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staging, os.path.basename(best), TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()  # every process's part (RNG states, shards) is written
        if self.args.should_save:
            self.checkpoint_files.publish(run_dir, step)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        # True resumes from the newest complete checkpoint (transformers' pick may be one a kill cut short).
        checkpoint = self.checkpoint_files.resolve(resume_from_checkpoint, self.args.output_dir)
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if not (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            target = self.accelerator.unwrap_model(model if model is not None else self.model)
            if load_converted_weights(target, resume_from_checkpoint):
                logger.info("Loaded %s with from_pretrained: its names differ from the model's", resume_from_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        states = self.checkpoint_files.read_states(checkpoint, (GROUP_KEYER_STATE_FILE, ESTIMATOR_STATE_FILE))
        if self.accelerator.num_processes > 1:
            # Only the saving process wrote these (one per node with save_on_each_node). Without a filesystem
            # shared by all nodes the others would find none and resume from fresh statistics, computing other
            # advantages than process 0: process 0's copy is the run's.
            broadcast_object_list(states, from_process=0)
        keyer_state, estimator_state = states
        if keyer_state is not None:
            self.group_keyer.load_state_dict(keyer_state)
        if not isinstance(self.estimator, Stateful):
            return
        if estimator_state is None:
            logger.warning(
                "%s has no %s: the advantage estimator's running statistics start afresh from this resume",
                checkpoint,
                ESTIMATOR_STATE_FILE,
            )
            return
        self.estimator.load_state_dict(estimator_state)


def _sampler_length(dataloader: Any) -> int | None:
    """Samples in a (possibly accelerate-wrapped) dataloader's sampler, without padding; None if unknown."""
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    while batch_sampler is not None and not hasattr(batch_sampler, "sampler"):
        batch_sampler = getattr(batch_sampler, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None)
    try:
        return len(sampler)
    except TypeError:  # an iterable dataset's sampler has no length
        return None


def _sampler_of(args: FairGRPOConfig) -> str | None:
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


def _check_sampling(dataset: Any, config: FairGRPOConfig) -> None:
    """A sampler setting needs a dataset transformers draws with a sampler: refuse it for a stream."""
    if not (config.balanced_sampling or config.sampling_weight_column):
        return
    if isinstance(dataset, (torch.utils.data.IterableDataset, StreamingDataset)):
        setting = (
            "balanced_sampling=True"
            if config.balanced_sampling
            else f"sampling_weight_column={config.sampling_weight_column!r}"
        )
        raise ValueError(
            f"{setting} needs a map-style train_dataset, got {type(dataset).__name__}: transformers draws an "
            "iterable dataset in stream order and never asks for a sampler, so the setting would be ignored. Load "
            "the data as a datasets.Dataset (no streaming), or unset it and weight the stream yourself"
        )


def _check_launch(accelerator: Any) -> None:
    """Refuse a launch whose processes would each train alone; warn when FSDP was asked for and is not used."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world_size = torch.distributed.get_world_size()
        if world_size != accelerator.num_processes:
            raise RuntimeError(
                f"launched as {world_size} processes, but accelerate set up a {accelerator.num_processes}-process "
                f"run ({accelerator.distributed_type}): each process would train alone on the whole data and write "
                "the same output_dir. On a machine without GPUs pass use_cpu=True (--use_cpu true) for CPU "
                "processes (gloo); otherwise check that every process sees its GPU"
            )
    asked_for_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked_for_fsdp and accelerator.distributed_type != DistributedType.FSDP:
        logger.warning(
            "The accelerate config asks for FSDP, but accelerate set up %s: FSDP is enabled for GPU-class devices "
            "only, so the model is replicated on every process (DDP), not sharded",
            accelerator.distributed_type,
        )


def _resolve_columns(dataset: Any, config: FairGRPOConfig, main_process: bool, latent_groups: bool) -> None:
    """Write the columns `dataset` resolves for `config`'s settings into it (fair_trl.inspection.resolve_columns).

    At construction, not mid-run: a column named explicitly and missing is an error. Default columns the data
    lacks are dropped, said once. A stream without known features is resolved by its first row.
    """
    resolved = resolve_columns(dataset_column_names(dataset), config)
    resolved.write_to(config)
    note = resolved.note(latent_groups=latent_groups)
    if note and main_process:
        logger.warning(note)
