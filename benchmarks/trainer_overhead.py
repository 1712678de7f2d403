"""What FairGRPO adds to a training step: FairGRPOTrainer (fair_grpo) against plain TRL GRPOTrainer.

Both train the tiny Gemma 3 architecture VLM (`fair_trl.models.build_tiny_vlm`, the same initial
weights) on the same synthetic clinical rows with the same rewards, seed and settings, in one process,
taking turns step by step: each trainer runs in its own thread and hands the other the baton at the
start of its turn (`Turns`: A B B A A B ...), so only one computes at a time and a shared machine's
slow spells hit both alike. The learning rate is 0 and each step starts from the same seed in both,
so both sample the same completions and do the same arithmetic; what differs is what FairGRPO does:
gathering domains and groups, the estimator, recording rollouts and the fairness log (every 5 steps,
as by default).

A step's time runs from the start of the trainer's step to the start of its next (the last: to the
end of training), so the fairness log, which runs right after its step, is counted; the first step of
each run (warm-up) is not. Printed per size (prompts x generations): the ratio of median step times
(FairGRPO / GRPO) and the ms per step FairGRPO adds, from medians and from means (means spread the
fairness log over its five steps), and the time spent inside FairGRPOTrainer's own additions
(`TimedFairGRPOTrainer`). Target: a median ratio of at most 1.02 at 128 x 8.

Then the same additions at the paper's batch, 512 prompts x 10 rollouts, without a model: 5,120
synthetic rows and completions through FairGRPOTrainer's own methods (recording rollouts, summing
rewards, gathering and keying groups, the estimator, rewriting the logged advantages) and every fifth
step the fairness log of the 25,600 rollouts since the last: FairGRPO's cost per batch at paper scale.

    python benchmarks/trainer_overhead.py [--sizes 16x4 128x8] [--steps 40 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback, ProgressCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from fair_trl import FairGRPOConfig, FairGRPOTrainer  # noqa: E402
from fair_trl.data import build_dataset  # noqa: E402
from fair_trl.labels import DATASET_LABELS  # noqa: E402
from fair_trl.models import build_tiny_vlm  # noqa: E402
from fair_trl.rewards import completion_text, format_reward  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fairness_log import make_answers, make_completions  # noqa: E402  (benchmarks/ is not a package)

RATIO_TARGET = 1.02  # at 128 x 8
# What FairGRPOTrainer does beyond GRPOTrainer, method by method (all called once per step, the last
# every `fairness_logging_steps`).
ADDITIONS = (
    "_record_rollouts",
    "_summed_rewards",
    "_compute_advantages",
    "_replace_logged_advantages",
    "_fairness_logs",
)
# Parts of _compute_advantages, timed for the breakdown only (the rest of it is the estimator).
DETAILS = ("_gather_group_metadata", "_log_estimator_step")


class TimedFairGRPOTrainer(FairGRPOTrainer):
    """FairGRPOTrainer that adds up the seconds spent in its own additions (`inside`) and their parts."""

    def __init__(self, *args, **kwargs):
        self.inside = collections.Counter()
        self.details = collections.Counter()
        super().__init__(*args, **kwargs)


def _timed(name, into):
    method = getattr(FairGRPOTrainer, name)

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            getattr(self, into)[name] += time.perf_counter() - start

    return timed


for _name in ADDITIONS:
    setattr(TimedFairGRPOTrainer, _name, _timed(_name, "inside"))
for _name in DETAILS:
    setattr(TimedFairGRPOTrainer, _name, _timed(_name, "details"))


def mentions_a_label(completions, dataset, **_) -> list[float]:
    """1.0 when the completion names any label of its dataset: a random tiny model sometimes does."""
    out = []
    for completion, name in zip(completions, dataset, strict=True):
        words = completion_text(completion).lower()
        out.append(1.0 if any(label.lower() in words for label in DATASET_LABELS.get(name, ())) else 0.0)
    return out


class Turns:
    """Two trainers taking turns, A B B A A B B A ...; each keeps the seconds of its own steps.

    The step that follows the other trainer's runs a few percent slower than one that follows its own
    (measured at 128 x 8: about 5%, whichever trainer it is), so strict alternation would charge that
    to whoever goes second. In this order each trainer has as many steps of either kind.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.turn = names[0]
        self.steps_in_turn = 0
        self.quota = 1  # the first turn is one step, every later one two
        self.done: set[str] = set()
        self.condition = threading.Condition()
        self.times: dict[str, list[float]] = {name: [] for name in names}

    def callback(self, name: str) -> TrainerCallback:
        turns = self

        class TakeTurns(TrainerCallback):
            started: float | None = None

            def on_step_begin(self, args, state, control, **kwargs):
                if self.started is not None:
                    turns.times[name].append(time.perf_counter() - self.started)
                turns.wait_for(name)
                # Common random numbers: both trainers' step k samples the same completions (the weights
                # are the same, the learning rate 0), so their steps differ by what FairGRPO adds, not
                # by how long the completions drawn in turn from one shared generator happen to be.
                torch.manual_seed(1000 + state.global_step)
                self.started = time.perf_counter()

            def on_train_end(self, args, state, control, **kwargs):
                if self.started is not None:
                    turns.times[name].append(time.perf_counter() - self.started)
                turns.finish(name)

        return TakeTurns()

    def wait_for(self, name: str) -> None:
        with self.condition:
            other = next(n for n in self.names if n != name)
            if self.turn == name and self.steps_in_turn >= self.quota and other not in self.done:
                self.turn, self.steps_in_turn, self.quota = other, 0, 2
                self.condition.notify_all()
            self.condition.wait_for(lambda: self.turn == name or other in self.done)
            self.steps_in_turn += 1

    def finish(self, name: str) -> None:
        with self.condition:
            self.done.add(name)
            self.turn = next(n for n in self.names if n != name)
            self.condition.notify_all()


def make_trainer(kind: str, model, processor, rows, prompts: int, generations: int, steps: int, scratch: str):
    common = dict(
        output_dir=os.path.join(scratch, kind),
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        learning_rate=0.0,
        per_device_train_batch_size=prompts * generations,
        num_generations=generations,
        max_completion_length=8,
        max_steps=steps,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    if kind == "fair_grpo":
        trainer_class, config = TimedFairGRPOTrainer, FairGRPOConfig(advantage_estimator="fair_grpo", **common)
    else:
        trainer_class, config = GRPOTrainer, GRPOConfig(**common)
    trainer = trainer_class(
        model=copy.deepcopy(model),
        reward_funcs=[mentions_a_label, format_reward],
        args=config,
        train_dataset=rows,
        processing_class=processor,
    )
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    return trainer


def race(model, processor, rows, prompts: int, generations: int, steps: int) -> tuple[dict[str, list[float]], float]:
    """Per-step seconds of GRPO and FairGRPO taking turns (first steps dropped), and FairGRPO's inside time."""
    turns = Turns(["grpo", "fair_grpo"])
    errors: list[BaseException] = []
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {
            kind: make_trainer(kind, model, processor, rows, prompts, generations, steps, scratch)
            for kind in turns.names
        }
        for kind, trainer in trainers.items():
            trainer.add_callback(turns.callback(kind))

        def train(kind: str) -> None:
            try:
                trainers[kind].train()
            except BaseException as err:  # noqa: BLE001  (re-raised in the main thread)
                errors.append(err)
                turns.finish(kind)

        threads = [threading.Thread(target=train, args=(kind,)) for kind in turns.names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    inside = sum(trainers["fair_grpo"].inside.values())
    return {kind: times[1:] for kind, times in turns.times.items()}, inside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["16x4", "128x8"], help="prompts x generations per step")
    parser.add_argument("--steps", nargs="+", type=int, default=[40, 20], help="steps per run, per size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args(argv)
    if len(args.steps) not in (1, len(args.sizes)):
        parser.error("--steps takes one value, or one per size")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()

    model, processor = build_tiny_vlm(seed=0)
    ok = True
    print("FairGRPOTrainer(fair_grpo) vs GRPOTrainer, tiny VLM, taking turns step by step")
    for size, steps in zip(
        args.sizes, args.steps * len(args.sizes) if len(args.steps) == 1 else args.steps, strict=True
    ):
        prompts, generations = (int(x) for x in size.split("x"))
        rows = build_dataset("synthetic", None, num_rows=max(400, 2 * prompts * steps))["train"]
        times, inside = race(model, processor, rows, prompts, generations, steps)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        mean = {k: statistics.mean(v) * 1e3 for k, v in times.items()}
        ratio = med["fair_grpo"] / med["grpo"]
        line = (
            f"  {prompts:>4} x {generations:<2}: median ms/step GRPO {med['grpo']:7.1f}, "
            f"FairGRPO {med['fair_grpo']:7.1f}: ratio {ratio:.3f}, adds {med['fair_grpo'] - med['grpo']:+.1f} ms"
            f" | mean: ratio {mean['fair_grpo'] / mean['grpo']:.3f}, adds {mean['fair_grpo'] - mean['grpo']:+.1f} ms"
            f" | inside FairGRPO's additions {inside * 1e3 / steps:.1f} ms/step ({len(times['grpo'])} steps each)"
        )
        if (prompts, generations) == (128, 8):
            met = ratio <= RATIO_TARGET
            ok &= met
            line += f"   target ratio <= {RATIO_TARGET}: {'met' if met else 'MISSED'}"
        print(line, flush=True)
    paper_scale(model, processor, args.threads)
    return 0 if ok else 1


def paper_scale(model, processor, threads: int, prompts: int = 512, generations: int = 10, steps: int = 10) -> None:
    """FairGRPO's additions on the paper's batch, through the trainer's own methods, without generating."""
    rows = build_dataset("synthetic", None, num_rows=4 * prompts)["train"]
    with tempfile.TemporaryDirectory() as scratch:
        config = FairGRPOConfig(
            output_dir=scratch,
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=2 * generations,
            num_generations=generations,
            report_to="none",
            advantage_estimator="fair_grpo",
        )
        trainer = TimedFairGRPOTrainer(
            model=copy.deepcopy(model),
            reward_funcs=[mentions_a_label, format_reward],
            args=config,
            train_dataset=rows,
            processing_class=processor,
        )
    trainer.model.train()
    metadata = rows.select_columns(["solution", "dataset", "sex", "age"]).to_list()
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    per_step, logs = [], []
    by_method: dict[str, list[float]] = collections.defaultdict(list)
    for step in range(1, steps + 1):
        picked = rng.choice(len(metadata), size=prompts, replace=False)
        inputs = [metadata[i] for i in picked.tolist() for _ in range(generations)]
        answers = [answer for _, _, answer in make_answers(rng, prompts * generations)]
        completions = [[{"role": "assistant", "content": text}] for text in make_completions(rng, answers)]
        trainer._last_rewards_per_func = (torch.rand(prompts * generations, 2, generator=generator) < 0.4).float()
        trainer._logs["advantages"].extend([0.0] * len(inputs))
        trainer.inside.clear()
        trainer.details.clear()
        trainer._record_rollouts(inputs, completions)
        rewards = trainer._summed_rewards()
        advantages = trainer._compute_advantages(rewards, inputs)
        trainer._replace_logged_advantages(advantages.tolist())
        per_step.append(sum(trainer.inside.values()) * 1e3)
        for name, seconds in trainer.inside.items():
            by_method[name].append(seconds * 1e3)
        by_method["estimator"].append((trainer.inside["_compute_advantages"] - sum(trainer.details.values())) * 1e3)
        for name, seconds in trainer.details.items():
            by_method[name].append(seconds * 1e3)
        if step % config.fairness_logging_steps == 0:
            trainer.inside.clear()
            trainer._fairness_logs("train")
            logs.append(trainer.inside["_fairness_logs"] * 1e3)
    step_ms = statistics.median(per_step[1:])
    log_ms = statistics.median(logs)
    every = config.fairness_logging_steps
    print(
        f"  paper scale, {prompts} x {generations} (no model; {threads} torch thread): FairGRPO's additions "
        f"{step_ms:.1f} ms per step + fairness log {log_ms:.1f} ms every {every} steps = "
        f"{step_ms + log_ms / every:.1f} ms per step"
    )
    parts = ", ".join(f"{name} {statistics.median(ms[1:]):.1f}" for name, ms in by_method.items())
    print(f"    per step, median ms: {parts} (the last three are parts of _compute_advantages)")


if __name__ == "__main__":
    sys.exit(main())
