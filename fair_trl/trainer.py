"""`FairGRPOTrainer`: TRL's `GRPOTrainer` with its advantages replaced through one seam.

TRL 1.16 computes advantages inline in `_generate_and_score_completions`, with no hook. TRL's
maintainers advise subclassing that method and returning the same output with new advantages;
this module does that with the least code it can: it keeps the gathered per-function rewards TRL
already computed (`_calculate_rewards`), sums them exactly as TRL does, hands them to
`_compute_advantages`, and puts the result back into the output and into the completions table.
All advantage math lives in `fair_trl.advantages`. The rest has an owner of its own, which the overrides
here hand off to: the rewards' sum (`fair_trl.reward_sum`), the rollouts' fairness log
(`fair_trl.rollout_log`), the checkpoint states (`fair_trl.checkpoint_io`) and their passage through
transformers (`fair_trl.checkpointing`), the model card record (`fair_trl.card_record`), the train
sampler (`fair_trl.sampling`, guided by `fair_trl.guided_sampling`) and the batch's groups (`fair_trl.batch_groups`).
"""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

import torch
from trl import GRPOTrainer

from fair_trl.advantages import FairGRPOAdvantage, get_spec, zero_signal
from fair_trl.batch_groups import estimator_metrics, gather_batch_groups
from fair_trl.card_record import TrainingCard
from fair_trl.checkpoint_io import CheckpointFiles, CheckpointState, group_settings
from fair_trl.checkpointing import AtomicCheckpoints
from fair_trl.config import FairGRPOConfig
from fair_trl.groups import GroupKeyer
from fair_trl.guided_sampling import guided_sampling
from fair_trl.inspection import fit_train_groups, resolve_train_columns
from fair_trl.launch import check_launch
from fair_trl.model_card import ModelCardRecord, write_model_card
from fair_trl.reward_sum import RewardSum
from fair_trl.rewards import with_config_label_sets
from fair_trl.rollout_log import RolloutFairnessLog
from fair_trl.sampling import check_sampling, train_sampler
from fair_trl.train_data_size import check_train_size
from fair_trl.vllm_compat import adapt_vllm_generation, to_vllm_checkpoint

logger = logging.getLogger(__name__)


class FairGRPOTrainer(AtomicCheckpoints, GRPOTrainer):
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
        # FairGRPO-guided sampling's statistics and weights (None when off).
        self.guided_sampling = guided_sampling(config, self.estimator)

        # TRL's own argument checks run first, with TRL's messages; then the dataset's against the settings.
        super().__init__(*bound.args[1:], **bound.kwargs)
        check_sampling(self.train_dataset, config)
        resolve_train_columns(
            self.train_dataset, config, self.accelerator.is_main_process, self.fair_estimator is not None
        )
        self.reward_funcs = with_config_label_sets(self.reward_funcs, config)
        check_launch(self.accelerator)
        check_train_size(self.train_dataset, self.args, self.num_generations, self.accelerator.num_processes)
        if getattr(self, "vllm_generation", None) is not None:
            adapt_vllm_generation(self.vllm_generation, self._model_type())

        self.group_keyer = GroupKeyer.from_config(config)
        fields = self.estimator_spec.config_fields(config)
        if config.guided_sampling:  # its weights come from FairGRPO statistics under these settings
            fields = tuple(dict.fromkeys([*fields, "guided_sampling", *get_spec("fair_grpo").config_fields(config)]))
        self.checkpoint_files = CheckpointFiles(group_settings(config, fields))
        self.checkpoint_state = CheckpointState(
            self.group_keyer,
            self.estimator,
            generation_cycle=self.args.steps_per_generation * self.num_iterations,
            gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            guided=self.guided_sampling,
        )

        # Fitted on the train rows (which columns each domain records, where partly known rows go); the
        # table of groups is logged now, and put in W&B when training begins.
        group_table = fit_train_groups(self.group_keyer, self.train_dataset, config)
        if group_table is not None:
            self.add_callback(group_table)
        self.fairness_log = RolloutFairnessLog(self.args, self.group_keyer)
        self.card = TrainingCard()
        self.reward_sum = RewardSum(self.reward_func_names, self.reward_weights)
        # Whether the batch being scored started in training or evaluation (see _generate_and_score_completions).
        self._scoring_mode = "train"
        # The train dataloader's sampler, whose epoch _run_epoch sets.
        self._train_sampler: Any = None
        # This batch's gathered per-function rewards, as TRL computed them (see _calculate_rewards).
        self._last_rewards_per_func: torch.Tensor | None = None

    @property
    def fairness_results(self) -> dict[str, dict[str, Any]]:
        """The latest full `compute_fairness` output per attribute, per mode ("train", "eval")."""
        return self.fairness_log.results

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
        if self._last_rewards_per_func is not None:
            self.reward_sum.fix_logged(self._last_rewards_per_func, self._metrics[self._scoring_mode])
        # Evaluation batches keep TRL's advantages: they train nothing and must not move the
        # estimator's running statistics. An estimator that reproduces TRL's advantages leaves them alone
        # when TRL normalises per reward function, which it alone implements.
        if not training:
            return output
        if self.estimator_spec.keeps_trl_advantages and self.multi_objective_aggregation != "sum_then_normalize":
            if self.guided_sampling is not None:
                self.checkpoint_state.generation_begins()
                self._observe_for_sampling(self._summed_rewards(), inputs)
            return output
        rewards = self._summed_rewards()
        # TRL's frac_reward_zero_std is one whole-batch figure under scale_rewards="batch"; this is per prompt.
        no_signal = zero_signal(rewards, self.num_generations)
        self._metrics["train"]["fair/frac_zero_signal"].append(no_signal.float().mean().item())
        self.checkpoint_state.generation_begins()
        advantages = self._compute_advantages(rewards, inputs).to(rewards.device)
        self._observe_for_sampling(rewards, inputs)
        start = self.accelerator.process_index * len(inputs)
        output["advantages"] = advantages[start : start + len(inputs)]
        self._replace_logged_advantages(advantages.tolist())
        return output

    def _summed_rewards(self) -> torch.Tensor:
        """This batch's summed rewards, NaN where unscorable (`fair_trl.reward_sum`)."""
        assert self._last_rewards_per_func is not None, "_calculate_rewards did not run"
        return self.reward_sum(self._last_rewards_per_func, self._metrics["train"])

    def _replace_logged_advantages(self, advantages: list[float]) -> None:
        # TRL appended its own advantages for this batch to the completions table before we replaced
        # them; overwrite that tail so the table shows what is trained on.
        logged = self._logs["advantages"]
        count = min(len(logged), len(advantages))
        for i in range(1, count + 1):
            logged[-i] = advantages[-i]

    # -- group metadata -------------------------------------------------------------------------

    def _gather_group_metadata(self, inputs: list[dict[str, Any]]) -> tuple[list[str], list[str | None]]:
        return gather_batch_groups(inputs, self.args, self.group_keyer, self.num_generations)

    def _log_estimator_step(self, groups: list[str | None]) -> None:
        for key, value in estimator_metrics(self.estimator, groups, self.group_keyer).items():
            self._metrics["train"][key].append(value)

    # -- sampling -------------------------------------------------------------------------------

    def _get_train_sampler(self, dataset=None):
        dataset = dataset if dataset is not None else self.train_dataset
        self._train_sampler = train_sampler(
            dataset,
            self.args,
            self.num_generations,
            self.num_iterations,
            self.shuffle_dataset,
            self.group_keyer,
            self.guided_sampling,
        )
        return self._train_sampler

    def _observe_for_sampling(self, rewards: torch.Tensor, inputs: list[dict[str, Any]]) -> None:
        """Guided sampling's statistics take in a scored training batch (a FairGRPO estimator's already have)."""
        if self.guided_sampling is None:
            return
        if self.guided_sampling.owns_stats:
            domains, groups = self._gather_group_metadata(inputs)
        else:
            domains, groups = [], []
        self.guided_sampling.observe(rewards, self.num_generations, domains, groups)

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
        self.fairness_log.record(self._scoring_mode, inputs, completions)

    def _fairness_logs(self, mode: str) -> dict[str, float]:
        """The fairness metrics of every process's rollouts since the last call; clears the buffer."""
        return self.fairness_log.logs(mode)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        dataloader = super().get_eval_dataloader(eval_dataset)
        self.fairness_log.start_eval(dataloader)
        return dataloader

    def _maybe_log_save_evaluate(self, *args: Any, **kwargs: Any) -> None:
        # Right after each optimizer step (and once more at an epoch's end, at the same step): the
        # trainer schedules its own fairness log, so no callback has to hold the trainer.
        if self.fairness_log.due(self.state.global_step):
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
        self.fairness_log.clear("eval")
        return super().evaluate(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if not self.model.training and self.args.demographic_columns:
            # TRL averages these and prefixes them with "eval_" like its other evaluation metrics.
            for key, value in self._fairness_logs("eval").items():
                self._metrics["eval"][key] = [value]
        super().log(logs, start_time)

    # -- publishing -----------------------------------------------------------------------------

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs: Any) -> None:
        """The fairness model card (fair_trl.model_card) instead of TRL's; `push_to_hub` uploads it."""
        if self.is_world_process_zero():
            self.write_model_card(dataset_name, model_name=model_name, tags=tags)

    def write_model_card(self, dataset_names: str | list[str] | None = None, **card: Any) -> str:
        """Write ``<output_dir>/README.md``, the card of `model_card_record`; returns its path."""
        return write_model_card(self.model_card_record(dataset_names, **card), self.args.output_dir)

    def use_audit_for_card(self, fairness: dict[str, dict[str, Any]], figures=None, note=None) -> None:
        """Make the card report an audit of the final model, not the last evaluation (`TrainingCard.use_audit`)."""
        self.card.use_audit(fairness, figures, note)

    def model_card_record(self, dataset_names: str | list[str] | None = None, **card: Any) -> ModelCardRecord:
        """What the model card says of this run (`TrainingCard.record`; `card`: model_name, tags, eval_split).

        `dataset_names`: what the model was trained on (a Hub id goes into the card's metadata); by
        default the train dataset's domains.
        """
        return self.card.record(
            self.args,
            self.model,
            self.train_dataset,
            self.estimator_spec,
            trained_steps=self.state.global_step,
            # The repository's full id once `push_to_hub` created it; before that, args.hub_model_id.
            hub_model_id=getattr(self, "hub_model_id", None) or self.args.hub_model_id,
            eval_fairness=self.fairness_results.get("eval") or {},
            dataset_names=dataset_names,
            **card,
        )

    # -- saving (checkpoints: fair_trl.checkpointing) ---------------------------------------------

    def _model_type(self) -> str | None:
        return getattr(getattr(self.accelerator.unwrap_model(self.model), "config", None), "model_type", None)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        # Weights under the names vLLM's loaders read (transformers reads both), so the saved or pushed
        # model can be served with vLLM. Checkpoints keep transformers' names: resuming reads them raw.
        if self.args.should_save and not self._saving_checkpoint:
            to_vllm_checkpoint(output_dir or self.args.output_dir, self._model_type())
