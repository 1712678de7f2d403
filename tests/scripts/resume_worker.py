"""Worker for tests/test_resume.py: one FairGRPO training run on CPU, in its own process so it can be SIGKILLed.

    python resume_worker.py MODEL OUT_DIR RECORD.json [--resume CHECKPOINT|latest] [--hang-after-step K]
                            [--die-in-checkpoint K]

Trains `STEPS` steps, checkpointing every `SAVE_STEPS` and logging fairness every `FAIRNESS_STEPS`. With
`--hang-after-step K` it generates and scores step K + 1 (moving the estimator and the rollout buffer in memory),
writes RECORD.json and OUT_DIR/hanging, then sleeps until the test kills it. RECORD.json holds, per step, the
gathered rewards, the advantages, the completions and fingerprints of the RNG, optimizer and scheduler state at the
start of the step; each fairness window with the steps its rollouts were generated at; the log history; and at the
end the estimator state (the final weights go to OUT_DIR/final_weights.pt). With `--die-in-checkpoint K` the
process SIGKILLs itself in the middle of writing checkpoint-K: the model weights (and FairGRPO's states) are
written, the optimizer, RNG and trainer states are not; fault injection for a kill that lands inside a checkpoint
write. `--resume latest` is `resume_from_checkpoint=True`. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset  # noqa: E402

from fair_trl import FairGRPOConfig, FairGRPOTrainer  # noqa: E402

SEED = 5
STEPS = 6
SAVE_STEPS = 3
FAIRNESS_STEPS = 2
NUM_GENERATIONS = 4
PROMPTS_PER_STEP = 2


def length_reward(completions, **_):
    # Varies across rollouts of a random model, so advantages (and the weights) move.
    return [min(len(c if isinstance(c, str) else c[-1]["content"]), 40) / 40 for c in completions]


def dataset(n: int = 32) -> Dataset:
    """Two domains; a quarter of the rows without demographics (clustered); some with an invalid age ("-5")."""
    rows = {"prompt": [], "dataset": [], "solution": [], "sex": [], "age": []}
    for i in range(n):
        rows["prompt"].append([{"role": "user", "content": f"Classify case {i} : Normal or Pneumonia ?"}])
        rows["dataset"].append(["site_a", "site_b"][(i // 3) % 2])
        rows["solution"].append(["Normal", "Pneumonia"][i % 2])
        unknown = i % 4 == 3
        rows["sex"].append(None if unknown else ["F", "M", "female"][i % 3])
        rows["age"].append(None if unknown else ["22", "47", "63", "81", "-5", "70", "35", "90"][i % 8])
    return Dataset.from_dict(rows)


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes() if not isinstance(a, bytes) else a)
    return h.hexdigest()


def rng_fingerprint() -> dict[str, str]:
    return {
        "torch": digest(torch.random.get_rng_state().numpy()),
        "numpy": digest(np.random.get_state()[1]),
        "python": hashlib.sha256(repr(random.getstate()).encode()).hexdigest(),
    }


def optimizer_fingerprint(optimizer) -> str:
    state = optimizer.state_dict()["state"]
    tensors = []
    for index in sorted(state):
        for key in sorted(state[index]):
            value = state[index][key]
            tensors.append(value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value))
    return digest(*tensors) if tensors else "empty"


class RecordingTrainer(FairGRPOTrainer):
    def __init__(self, *args, hang_after_step=None, record_path=None, out_dir=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hang_after_step = hang_after_step
        self.record_path = record_path
        self.out_dir = out_dir
        self.steps: list[dict] = []
        self.windows: list[dict] = []
        self._generated_at: dict[int, int] = {}  # id(Rollout) -> the step that generated it

    def _generate_and_score_completions(self, inputs):
        if self.model.training:
            step = {
                "step": self.state.global_step + 1,
                "rng": rng_fingerprint(),
                "optimizer": optimizer_fingerprint(self.optimizer),
                "optimizer_steps": sorted({int(s["step"]) for s in self.optimizer.state.values() if "step" in s}),
                "lr": self.lr_scheduler.get_last_lr(),
                "scheduler_last_epoch": self.lr_scheduler.last_epoch,
                "estimator_step_before": self.fair_estimator.step,
            }
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            step["completions"] = self.processing_class.batch_decode(output["completion_ids"])
            step["advantages"] = output["advantages"].tolist()
            step["rewards"] = self._summed_rewards().tolist()
            self.steps.append(step)
            if self.hang_after_step is not None and self.state.global_step == self.hang_after_step:
                # Step K + 1 is generated, scored, its rollouts buffered and the estimator moved: now wait
                # for SIGKILL, as a crash mid-step would leave things.
                self.dump()
                open(os.path.join(self.out_dir, "hanging"), "w").close()
                time.sleep(3600)
        return output

    def _record_rollouts(self, inputs, completions):
        buffer = self.fairness_log.rollouts["train" if self.model.training else "eval"]
        before = len(buffer)
        super()._record_rollouts(inputs, completions)
        for rollout in buffer[before:]:
            self._generated_at[id(rollout)] = self.state.global_step + 1

    def _fairness_logs(self, mode):
        if mode == "train":
            window = self.fairness_log.rollouts[mode]
            self.windows.append(
                {
                    "logged_at": self.state.global_step,
                    "generated_at": [self._generated_at.pop(id(r)) for r in window],
                    "rollouts": [[r.answer, r.reference, r.dataset, dict(r.groups)] for r in window],
                }
            )
        return super()._fairness_logs(mode)

    def dump(self, final: bool = False) -> None:
        record = {
            "steps": self.steps,
            "windows": self.windows,
            "log_history": self.state.log_history,
            "global_step": self.state.global_step,
            "estimator_state": self.fair_estimator.state_dict(),
            "keyer_summary": self.group_keyer.summary(),
            "final": final,
        }
        with open(self.record_path, "w") as f:
            json.dump(record, f)


def die_in_checkpoint(step: int) -> None:
    original = transformers.Trainer._save_optimizer_and_scheduler

    def die_before_the_optimizer(self, output_dir):
        if self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, output_dir)

    transformers.Trainer._save_optimizer_and_scheduler = die_before_the_optimizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("record")
    parser.add_argument("--resume", default=None)
    parser.add_argument("--hang-after-step", type=int, default=None)
    parser.add_argument("--die-in-checkpoint", type=int, default=None)
    cli = parser.parse_args()
    if cli.die_in_checkpoint is not None:
        die_in_checkpoint(cli.die_in_checkpoint)
    torch.set_num_threads(1)
    args = FairGRPOConfig(
        output_dir=cli.out_dir,
        use_cpu=True,
        bf16=False,
        learning_rate=1e-3,
        per_device_train_batch_size=PROMPTS_PER_STEP * NUM_GENERATIONS,
        num_generations=NUM_GENERATIONS,
        max_completion_length=6,
        max_steps=STEPS,
        logging_steps=1,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        report_to="none",
        seed=SEED,
        gradient_checkpointing=False,
        advantage_estimator="fair_grpo",
        fairness_logging_steps=FAIRNESS_STEPS,
    )
    trainer = RecordingTrainer(
        model=cli.model_dir,
        reward_funcs=length_reward,
        args=args,
        train_dataset=dataset(),
        hang_after_step=cli.hang_after_step,
        record_path=cli.record,
        out_dir=cli.out_dir,
    )
    trainer.train(resume_from_checkpoint=True if cli.resume == "latest" else cli.resume)
    torch.save(
        {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, f"{cli.out_dir}/final_weights.pt"
    )
    trainer.dump(final=True)


if __name__ == "__main__":
    main()
