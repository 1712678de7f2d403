"""FairGRPO's checkpoints: written whole or not at all, resumed only from a complete one, with the same groups.

transformers writes ``checkpoint-N`` in place, file by file; a kill in the middle leaves a folder that
`get_last_checkpoint` (and ``resume_from_checkpoint=True``) picks, and the resume dies on a missing file.
`CheckpointFiles` has the trainer write each checkpoint into ``.partial-checkpoint-N/checkpoint-N`` and rename
it to ``checkpoint-N`` once every process has written its part, so the folders transformers lists, rotates
(``save_total_limit``) and resumes from are complete. A rename is atomic: a kill leaves the old checkpoints
and possibly a ``.partial-*`` folder, which the next save removes.

Besides transformers' files each checkpoint holds the trainer's states (the group keyer's counts, the
estimator's running statistics, guided sampling's weights) and the group settings they were computed under;
a resume under other settings would mix two sets of group keys in one set of statistics, so it is refused
naming each difference.
`CheckpointState` says which states those are at each save and puts them back on a resume.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from typing import Any

from accelerate.utils import broadcast_object_list
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from fair_trl.advantages import Stateful

__all__ = [
    "ESTIMATOR_STATE_FILE",
    "GROUP_KEYER_STATE_FILE",
    "GROUP_SETTINGS_FILE",
    "GUIDED_SAMPLING_STATE_FILE",
    "CheckpointFiles",
    "CheckpointState",
    "group_settings",
    "incomplete_reason",
    "newest_complete_checkpoint",
]

logger = logging.getLogger(__name__)

ESTIMATOR_STATE_FILE = "fair_grpo_state.json"
GROUP_KEYER_STATE_FILE = "group_keyer_state.json"
GROUP_SETTINGS_FILE = "fair_grpo_group_settings.json"
GUIDED_SAMPLING_STATE_FILE = "guided_sampling_state.json"
TRAINER_STATE_FILE = "trainer_state.json"  # transformers writes it after the weights, optimizer and RNG states
STAGING_PREFIX = ".partial-"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def write_json_atomically(path: str, value: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def read_json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def incomplete_reason(folder: str) -> str | None:
    """Why `folder` is not a checkpoint transformers can resume from; None when it is complete."""
    path = os.path.join(folder, TRAINER_STATE_FILE)
    if not os.path.isfile(path):
        return f"it has no {TRAINER_STATE_FILE}"
    try:
        read_json(path)
    except ValueError:
        return f"its {TRAINER_STATE_FILE} is not whole JSON"
    return None


def _checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the ``checkpoint-N`` folders in `run_dir`, newest step first."""
    if not os.path.isdir(run_dir):
        return []
    found = [
        (int(m.group(1)), os.path.join(run_dir, name)) for name in os.listdir(run_dir) if (m := _CHECKPOINT.match(name))
    ]
    return sorted((step, path) for step, path in found if os.path.isdir(path))[::-1]


def newest_complete_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint in `run_dir`, logging each newer one it skips and why; None if none."""
    for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else ():
        if name.startswith(STAGING_PREFIX):
            logger.warning("Not resuming from %s: a checkpoint whose write was cut short", os.path.join(run_dir, name))
    for _, path in _checkpoints(run_dir):
        reason = incomplete_reason(path)
        if reason is None:
            return path
        logger.warning("Skipping %s: %s (its write was cut short); resuming from an older checkpoint", path, reason)
    return None


def group_settings(config: Any, config_fields: tuple[str, ...]) -> dict[str, Any]:
    """The settings a checkpoint's group keys and estimator statistics depend on (`config_fields`: the estimator's)."""
    settings = {
        "demographic_columns": list(config.demographic_columns),
        "domain_column": config.domain_column,
        "age_bins": list(config.age_bins),
        "max_age": config.max_age,
        "advantage_estimator": config.advantage_estimator,
    }
    return settings | {name: getattr(config, name) for name in config_fields}


def _comparable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))  # tuples as lists, as the saved file holds them


class CheckpointFiles:
    """What FairGRPO adds to transformers' checkpoints, and how they are written and chosen for a resume.

    `group_settings`: the settings the saved group keys and statistics depend on (recorded in each checkpoint).
    """

    def __init__(self, group_settings: Mapping[str, Any]):
        self.group_settings = _comparable(dict(group_settings))

    # -- writing ----------------------------------------------------------------------------------

    @staticmethod
    def staging_dir(run_dir: str, step: int) -> str:
        """The folder transformers writes checkpoint `step` under (as its run folder) before the rename."""
        return os.path.join(run_dir, f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-{step}")

    def begin(self, run_dir: str, step: int) -> str:
        """Clear the cut-short checkpoints an earlier kill left in `run_dir`; return the staged checkpoint folder.

        Only the process that saves calls it; the others wait for it before writing their parts.
        """
        os.makedirs(run_dir, exist_ok=True)
        for name in os.listdir(run_dir):
            if name.startswith(STAGING_PREFIX):
                logger.warning("Removing %s: a checkpoint whose write was cut short", os.path.join(run_dir, name))
                shutil.rmtree(os.path.join(run_dir, name))
        folder = os.path.join(self.staging_dir(run_dir, step), f"{PREFIX_CHECKPOINT_DIR}-{step}")
        os.makedirs(folder)
        return folder

    def write_states(self, folder: str, states: Mapping[str, Any]) -> None:
        """The trainer's states (file name -> JSON value) and the group settings, into the staged `folder`."""
        for name, state in {**states, GROUP_SETTINGS_FILE: self.group_settings}.items():
            write_json_atomically(os.path.join(folder, name), state)

    @staticmethod
    def publish(run_dir: str, step: int) -> str:
        """Rename the staged checkpoint `step` to ``run_dir/checkpoint-step`` (replacing one saved at that step)."""
        staging = CheckpointFiles.staging_dir(run_dir, step)
        name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        target = os.path.join(run_dir, name)
        if os.path.exists(target):
            os.rename(target, os.path.join(staging, f"replaced-{name}"))
        os.rename(os.path.join(staging, name), target)
        shutil.rmtree(staging)
        return target

    # -- resuming ---------------------------------------------------------------------------------

    def resolve(self, resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
        """The checkpoint a resume starts from: True means the newest complete one in `output_dir`.

        Refuses a checkpoint that is incomplete or was saved under other group settings.
        """
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        if resume_from_checkpoint is True:
            checkpoint = newest_complete_checkpoint(output_dir)
            if checkpoint is None:
                raise ValueError(f"No complete checkpoint found in output directory ({output_dir}) to resume from")
        else:
            checkpoint = os.fspath(resume_from_checkpoint)
            reason = incomplete_reason(checkpoint) if os.path.isdir(checkpoint) else None
            if reason is not None:
                newest = newest_complete_checkpoint(os.path.dirname(checkpoint) or ".")
                raise ValueError(
                    f"{checkpoint} is not a complete checkpoint: {reason} (its write was cut short). The newest "
                    f"complete one beside it is {newest}; resume_from_checkpoint=True picks it"
                )
        self.check_group_settings(checkpoint)
        return checkpoint

    def check_group_settings(self, checkpoint: str) -> None:
        saved = read_json(os.path.join(checkpoint, GROUP_SETTINGS_FILE)) if os.path.isdir(checkpoint) else None
        if saved is None:
            return  # saved by an older fair-trl (or a plain GRPOTrainer): nothing to compare with
        differences = [
            f"{key}: {saved.get(key)!r} in the checkpoint, {self.group_settings.get(key)!r} now"
            for key in dict.fromkeys([*saved, *self.group_settings])
            if saved.get(key) != self.group_settings.get(key)
        ]
        if differences:
            raise ValueError(
                f"{checkpoint} was saved under other group settings ({'; '.join(differences)}). Its group keys and "
                "running statistics would mix with the new ones: resume with the checkpoint's settings, or start a "
                "new run"
            )

    @staticmethod
    def read_states(checkpoint: str, names: tuple[str, ...]) -> list[Any]:
        """The JSON states `names` saved in `checkpoint`, None for each one it lacks."""
        return [read_json(os.path.join(checkpoint, name)) for name in names]


class CheckpointState:
    """The trainer's states a checkpoint holds: the group keyer's counts, a stateful estimator's statistics and
    guided sampling's state (`guided`, None when off).

    `generation_cycle`: the micro-batches one generation batch serves (``steps_per_generation * num_iterations``).
    Checkpoints fall on optimizer steps, so unless `gradient_accumulation_steps` is a whole number of generation
    cycles some fall inside a generation batch. TRL checkpoints no generation buffer: a resume from there
    generates that batch again and the estimator would see it a second time, so such a checkpoint holds the
    states from before the batch.
    """

    def __init__(
        self, keyer: Any, estimator: Any, generation_cycle: int, gradient_accumulation_steps: int, guided: Any = None
    ):
        self.keyer = keyer
        self.estimator = estimator
        self.guided = guided
        self.generation_cycle = generation_cycle
        self.can_split_generation_batches = gradient_accumulation_steps % generation_cycle != 0
        self._generation_start: dict[str, Any] | None = None

    def states(self) -> dict[str, Any]:
        """The states now, file name -> JSON value."""
        states = {GROUP_KEYER_STATE_FILE: self.keyer.state_dict()}
        if isinstance(self.estimator, Stateful):
            states[ESTIMATOR_STATE_FILE] = self.estimator.state_dict()
        if self.guided is not None:
            states[GUIDED_SAMPLING_STATE_FILE] = self.guided.state_dict()
        return states

    def generation_begins(self) -> None:
        """A training generation batch is about to move the states: keep them, if a checkpoint can fall inside it."""
        if self.can_split_generation_batches:
            self._generation_start = self.states()

    def to_save(self, micro_step: int) -> dict[str, Any]:
        """The states a checkpoint saved after `micro_step` micro-batches holds."""
        inside_generation_batch = micro_step % self.generation_cycle != 0
        if inside_generation_batch and self._generation_start is not None:
            return self._generation_start
        return self.states()

    def restore(self, checkpoint: str, num_processes: int) -> None:
        """Load the states `checkpoint` holds (every process must call it); warn when one the run needs is missing."""
        names = (GROUP_KEYER_STATE_FILE, ESTIMATOR_STATE_FILE, GUIDED_SAMPLING_STATE_FILE)
        states = CheckpointFiles.read_states(checkpoint, names)
        if num_processes > 1:
            # Only the saving process wrote these (one per node with save_on_each_node). Without a filesystem
            # shared by all nodes the others would find none and resume from fresh statistics, computing other
            # advantages than process 0: process 0's copy is the run's.
            broadcast_object_list(states, from_process=0)
        keyer_state, estimator_state, guided_state = states
        if keyer_state is not None:
            self.keyer.load_state_dict(keyer_state)
        if isinstance(self.estimator, Stateful):
            _load(
                self.estimator,
                estimator_state,
                checkpoint,
                ESTIMATOR_STATE_FILE,
                "the advantage estimator's running statistics",
            )
        if self.guided is not None:
            _load(self.guided, guided_state, checkpoint, GUIDED_SAMPLING_STATE_FILE, "guided sampling's weights")


def _load(owner: Any, state: Any, checkpoint: str, name: str, what: str) -> None:
    if state is None:
        logger.warning("%s has no %s: %s start afresh from this resume", checkpoint, name, what)
        return
    owner.load_state_dict(state)
