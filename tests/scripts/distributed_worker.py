"""Worker for tests/test_distributed.py: `torchrun --nproc_per_node 2 distributed_worker.py MODEL OUT`.

Runs, one after the other in the same two CPU processes (gloo), the scenarios below and writes
OUT/rank{N}.json with what each recorded. Not collected by pytest (no test_ prefix).

* ``buffered``: FairGRPO for 4 optimizer steps with gradient_accumulation_steps 2 and steps_per_generation 4,
  so one generation batch (16 prompts x 4 completions over both ranks) spans 2 optimizer steps. Per
  generation batch: the gathered rewards, domains and groups, the global advantages, the local slice
  returned to TRL; per micro-batch: the advantages it trained on. At the end the estimator's state and a
  digest of the weights.
* ``empty_rank``: fairness logged every step while rank 1's rows have no reference (its rollout buffer is
  always empty); per log, each rank's local buffer size and what was scored and logged.
* ``eval_padding``: `evaluate()` on 5 prompts with eval batch 2 on each of 2 ranks, so accelerate pads the
  last batches (even_batches); the rollouts the eval fairness was computed on.
* ``private_checkpoint``: 2 steps, a checkpoint at step 2, then a resume for a third step in which rank 1
  resumes from its own copy of the checkpoint without the estimator or keyer state (a node with no
  shared filesystem); the states each rank holds after loading and the step-3 advantages.
* ``epoch_resume``: 6 rows, 2 prompts a step (3 steps an epoch), 5 steps with a checkpoint at step 4 (inside
  the second epoch), then a resume from it: what both runs' estimators saw at step 5.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

import fair_trl.rollout_log  # noqa: E402
from fair_trl import FairGRPOConfig, FairGRPOTrainer  # noqa: E402
from fair_trl.checkpoint_io import ESTIMATOR_STATE_FILE, GROUP_KEYER_STATE_FILE  # noqa: E402

NUM_GENERATIONS = 4
SEED = 11


def length_reward(completions, **_):
    # Varies across rollouts of a random model, so advantages are non-zero.
    return [min(len(c if isinstance(c, str) else c[-1]["content"]), 40) / 40 for c in completions]


def dataset(n: int = 64, solution=None) -> Dataset:
    """Three domains; every third row has no demographics at all (clustered), the rest sex x age groups."""
    domains = ["chexpert", "ham10000", "isic2020"]
    rows = {"prompt": [], "dataset": [], "sex": [], "age": [], "solution": []}
    for i in range(n):
        rows["prompt"].append([{"role": "user", "content": f"Classify case {i} : Normal or Pneumonia ?"}])
        rows["dataset"].append(domains[(i // 2) % 3])
        unknown = i % 3 == 0
        rows["sex"].append(None if unknown else ["F", "M"][i % 2])
        rows["age"].append(None if unknown else ["22", "40", "60", "80", "unknown"][i % 5])
        rows["solution"].append(solution(i) if solution else ["Normal", "Pneumonia"][i % 2])
    return Dataset.from_dict(rows)


def config(out_dir: str, **overrides) -> FairGRPOConfig:
    values = dict(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        learning_rate=1e-3,
        per_device_train_batch_size=8,
        num_generations=NUM_GENERATIONS,
        max_completion_length=6,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=SEED,
        gradient_checkpointing=False,
        advantage_estimator="fair_grpo",
        fairness_logging_steps=0,
    )
    values.update(overrides)
    return FairGRPOConfig(**values)


class RecordingTrainer(FairGRPOTrainer):
    """Records what each rank's estimator saw and returned, what it trained on and what the fairness log scored."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: list[dict] = []
        self.micro_batches: list[list[float]] = []
        self.fairness_logs: list[dict] = []
        self.loaded_states: dict | None = None

    def _gather_group_metadata(self, inputs):
        self._metadata = super()._gather_group_metadata(inputs)
        return self._metadata

    def _compute_advantages(self, rewards, inputs):
        advantages = super()._compute_advantages(rewards, inputs)
        domains, groups = self._metadata
        self.records.append(
            {
                "step": self.state.global_step,
                "rewards": rewards.tolist(),
                "domains": domains,
                "groups": groups,
                "advantages": advantages.tolist(),
                "local_prompts": [row["prompt"][-1]["content"] for row in inputs],
                "local_domains": [row["dataset"] for row in inputs],
            }
        )
        return advantages

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.records[-1]["trained_on"] = output["advantages"].tolist()
        return output

    def _prepare_inputs(self, generation_batch):
        inputs = super()._prepare_inputs(generation_batch)
        if self.model.training:
            self.micro_batches.append(inputs["advantages"].tolist())
        return inputs

    def _fairness_logs(self, mode):
        local = len(self.fairness_log.rollouts[mode])
        logs = super()._fairness_logs(mode)
        self.fairness_logs.append({"mode": mode, "step": self.state.global_step, "local": local, "logs": logs})
        return logs

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.loaded_states = {"estimator": self.fair_estimator.state_dict(), "keyer": self.group_keyer.state_dict()}


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def buffered(model_dir: str, out: str) -> dict:
    args = config(os.path.join(out, "buffered"), max_steps=4, gradient_accumulation_steps=2, steps_per_generation=4)
    trainer = RecordingTrainer(model=model_dir, reward_funcs=length_reward, args=args, train_dataset=dataset())
    trainer.train()
    accelerator = trainer.accelerator
    return {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "seed": SEED,
        "num_generations": NUM_GENERATIONS,
        "global_step": trainer.state.global_step,
        "records": trainer.records,
        "micro_batches": trainer.micro_batches,
        "state": trainer.fair_estimator.state_dict(),
        "weights_sha256": weights_digest(trainer.model),
    }


def empty_rank(model_dir: str, out: str) -> dict:
    # Unshuffled, 2 prompts per rank per step: rank 0 gets prompts 4k, 4k+1 and rank 1 prompts 4k+2, 4k+3,
    # which have no reference and so no rollout to score.
    data = dataset(32, solution=lambda i: None if (i // 2) % 2 else ["Normal", "Pneumonia"][i % 2])
    args = config(os.path.join(out, "empty_rank"), shuffle_dataset=False, fairness_logging_steps=1)
    trainer = RecordingTrainer(model=model_dir, reward_funcs=length_reward, args=args, train_dataset=data)
    trainer.train()
    logged = [{k: v for k, v in e.items() if k.startswith("fairness/")} for e in trainer.state.log_history]
    return {
        "fairness_logs": trainer.fairness_logs,
        "local_prompts": [r["local_prompts"] for r in trainer.records],
        "history": [(e["step"], entry) for e, entry in zip(trainer.state.log_history, logged, strict=True) if entry],
    }


def eval_padding(model_dir: str, out: str) -> dict:
    scored = []
    original = fair_trl.rollout_log.fairness_results

    def recording(rollouts, attributes):
        scored.append([[r.reference, r.dataset, dict(r.groups)] for r in rollouts])
        return original(rollouts, attributes)

    fair_trl.rollout_log.fairness_results = recording
    try:
        data = dataset(5, solution=lambda i: f"label{i}")
        args = config(os.path.join(out, "eval_padding"), per_device_eval_batch_size=2, num_generations_eval=1)
        trainer = RecordingTrainer(
            model=model_dir, reward_funcs=length_reward, args=args, train_dataset=dataset(), eval_dataset=data
        )
        metrics = trainer.evaluate()
    finally:
        fair_trl.rollout_log.fairness_results = original
    return {
        "scored": scored,
        "references": list(data["solution"]),
        "n": trainer.fairness_results["eval"]["sex"]["n"],
        "metrics": {k: v for k, v in metrics.items() if k.startswith("eval_fairness/")},
    }


def private_checkpoint(model_dir: str, out: str) -> dict:
    run = os.path.join(out, "private_checkpoint")
    first = RecordingTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=config(run, save_strategy="steps", save_steps=2),
        train_dataset=dataset(),
    )
    first.train()
    accelerator = first.accelerator
    shared = os.path.join(run, "checkpoint-2")
    checkpoint = shared
    if accelerator.process_index == 1:
        # This rank's node has its own disk: a copy of the checkpoint without what only the saving rank wrote.
        checkpoint = os.path.join(out, "rank1_disk", "checkpoint-2")
        shutil.copytree(shared, checkpoint)
        for name in (ESTIMATOR_STATE_FILE, GROUP_KEYER_STATE_FILE):
            os.remove(os.path.join(checkpoint, name))
    accelerator.wait_for_everyone()
    with open(os.path.join(shared, ESTIMATOR_STATE_FILE)) as f:
        saved = json.load(f)
    resumed = RecordingTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=config(run, max_steps=3),
        train_dataset=dataset(),
    )
    resumed.train(resume_from_checkpoint=checkpoint)
    return {
        "checkpoint": checkpoint,
        "saved": saved,
        "loaded": resumed.loaded_states,
        "records": resumed.records,
        "final_state": resumed.fair_estimator.state_dict(),
    }


def epoch_resume(model_dir: str, out: str) -> dict:
    run = os.path.join(out, "epoch_resume")
    data = dataset(6)
    settings = dict(per_device_train_batch_size=4, max_steps=5)
    full = RecordingTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=config(run, save_strategy="steps", save_steps=4, **settings),
        train_dataset=data,
    )
    full.train()
    resumed = RecordingTrainer(
        model=model_dir, reward_funcs=length_reward, args=config(run + "_resumed", **settings), train_dataset=data
    )
    resumed.train(resume_from_checkpoint=os.path.join(run, "checkpoint-4"))
    return {"full": full.records, "resumed": resumed.records}


SCENARIOS = {
    "buffered": buffered,
    "empty_rank": empty_rank,
    "eval_padding": eval_padding,
    "private_checkpoint": private_checkpoint,
    "epoch_resume": epoch_resume,
}


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    result = {name: run(model_dir, out) for name, run in SCENARIOS.items()}
    rank = torch.distributed.get_rank()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
