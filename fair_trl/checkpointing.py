"""How a trainer's checkpoints pass through transformers: written whole, holding the estimator's states.

`AtomicCheckpoints` is a mixin for a transformers `Trainer` subclass that has `checkpoint_files`
(`fair_trl.checkpoint_io.CheckpointFiles`) and `checkpoint_state` (`CheckpointState`). It overrides the
few `Trainer` methods a checkpoint goes through, so that:

- a checkpoint is staged, then published by one rename (a kill mid-save leaves no folder a resume
  would pick), with the group keyer's and the estimator's states inside it;
- ``resume_from_checkpoint=True`` resumes from the newest complete checkpoint;
- a checkpoint whose weights are saved under other names (vLLM's) still loads;
- resuming restores the states, the same on every process.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import rotate_checkpoints

from fair_trl.checkpoints import load_converted_weights

__all__ = ["AtomicCheckpoints"]

logger = logging.getLogger(__name__)


class AtomicCheckpoints:
    """Mixin placed before the `Trainer` class: ``class MyTrainer(AtomicCheckpoints, GRPOTrainer)``."""

    # While a checkpoint is written: its staging folder, which transformers takes for the run folder.
    _checkpoint_staging: str | None = None
    _saving_checkpoint = False

    def _get_output_dir(self, trial):
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        run_dir, step = self._get_output_dir(trial=trial), self.state.global_step
        staging = self.checkpoint_files.staging_dir(run_dir, step)
        if self.args.should_save:
            folder = self.checkpoint_files.begin(run_dir, step)
            self.checkpoint_files.write_states(folder, self.checkpoint_state.to_save(self._step))
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
        if checkpoint is not None:
            self.checkpoint_state.restore(checkpoint, self.accelerator.num_processes)
