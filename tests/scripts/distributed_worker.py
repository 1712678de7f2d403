"""Worker for tests/test_distributed.py, launched as `torchrun --nproc_per_node 2 distributed_worker.py MODEL OUT`.

Trains FairGRPO for a few steps on CPU (gloo) and writes OUT/rank{N}.json with, per step, the gathered rewards,
domains and groups and the global advantages `_compute_advantages` returned, the local slice TRL trained on, and at
the end the estimator's state and a digest of the weights. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from fair_trl import FairGRPOConfig, FairGRPOTrainer  # noqa: E402

NUM_GENERATIONS = 4
SEED = 11
STEPS = 4


def length_reward(completions, **_):
    # Varies across rollouts of a random model, so advantages are non-zero.
    return [min(len(c if isinstance(c, str) else c[-1]["content"]), 40) / 40 for c in completions]


def dataset(n: int = 64) -> Dataset:
    """Three domains; every third row has no demographics at all (clustered), the rest sex x age groups."""
    domains = ["chexpert", "ham10000", "isic2020"]
    rows = {"prompt": [], "dataset": [], "sex": [], "age": []}
    for i in range(n):
        rows["prompt"].append([{"role": "user", "content": f"Classify case {i} : Normal or Pneumonia ?"}])
        rows["dataset"].append(domains[(i // 2) % 3])
        unknown = i % 3 == 0
        rows["sex"].append(None if unknown else ["F", "M"][i % 2])
        rows["age"].append(None if unknown else ["22", "40", "60", "80", "unknown"][i % 5])
    return Dataset.from_dict(rows)


class RecordingTrainer(FairGRPOTrainer):
    """Records what each rank's `_compute_advantages` saw and returned."""

    records: list[dict]

    def _gather_group_metadata(self, inputs):
        domains, groups = super()._gather_group_metadata(inputs)
        self._metadata = (domains, groups)
        return domains, groups

    def _compute_advantages(self, rewards, inputs):
        advantages = super()._compute_advantages(rewards, inputs)
        domains, groups = self._metadata
        self.records = getattr(self, "records", [])
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


def main() -> None:
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    args = FairGRPOConfig(
        output_dir=os.path.join(out_dir, "run"),
        use_cpu=True,
        bf16=False,
        learning_rate=1e-3,
        per_device_train_batch_size=16,  # 4 prompts per rank, 8 per global batch
        num_generations=NUM_GENERATIONS,
        max_completion_length=6,
        max_steps=STEPS,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=SEED,
        gradient_checkpointing=False,
        advantage_estimator="fair_grpo",
        fairness_logging_steps=0,
    )
    trainer = RecordingTrainer(model=model_dir, reward_funcs=length_reward, args=args, train_dataset=dataset())
    trainer.train()
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    result = {
        "process_index": trainer.accelerator.process_index,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "seed": SEED,
        "num_generations": NUM_GENERATIONS,
        "global_step": trainer.state.global_step,
        "records": trainer.records,
        "state": trainer.fair_estimator.state_dict(),
        "weights_sha256": digest.hexdigest(),
    }
    path = os.path.join(out_dir, f"rank{trainer.accelerator.process_index}.json")
    with open(path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
