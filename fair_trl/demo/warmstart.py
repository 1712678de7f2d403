"""The warm start: a short supervised stage before RL, as real runs start from an instruction-tuned model.

A real FairGRPO run starts from MedGemma-4B-IT, which already answers in the format and has a skill
profile across groups that RL then reshapes. Here TRL's `SFTTrainer` teaches the tiny VLM to answer
``\\boxed{<labels>}`` on the benchmark's pre-training part (`fair_trl.demo.benchmark`), which
under-represents the disadvantaged groups, so the model starts RL well above chance on the majority and
behind on them.

One warm start per seed, shared by every method of that seed. It is saved under
``<cache_dir>/<key>/seed<N>/`` with the model, the processor, and its greedy evaluation (the report's
step 0), and reused while everything it depends on (`cache_key`: settings, code, library versions) is
unchanged. Finished RL runs are kept next to it (`fair_trl.demo.experiment`), so a demo that was
interrupted resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["CACHE_VERSION", "add_completions", "templated", "cache_key", "code_hash", "load_warm_start", "warm_start"]

# Bump when the warm start's code changes what it produces, so stale caches are not reused.
CACHE_VERSION = 1
DONE_FILE = "warm_start.json"


def add_completions(dataset):
    """The SFT target of every row: the answer in the format the RL reward reads, ``\\boxed{solution}``."""
    return dataset.map(
        lambda row: {"completion": [{"role": "assistant", "content": "\\boxed{" + row["solution"] + "}"}]},
        desc=None,
    )


def templated(dataset, processor):
    """`add_completions` rendered with the chat template once, as the prompt and completion texts TRL's
    collator would render from the messages at every step (identical strings, so identical training)."""
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    rendered: dict[str, dict[str, str]] = {}

    def render(prompt: list[dict[str, Any]], completion: list[dict[str, Any]]) -> dict[str, str]:
        # Rows of one domain share the prompt text, so only a few distinct (prompt, answer) pairs exist.
        key = json.dumps([prompt, completion], sort_keys=True)
        if key not in rendered:
            example = {
                "prompt": prepare_multimodal_messages(prompt, images=[None]),
                "completion": prepare_multimodal_messages(completion),
            }
            rendered[key] = apply_chat_template(example, processor)
        return rendered[key]

    # The images are not read here (input_columns), only carried along.
    return add_completions(dataset).map(render, input_columns=["prompt", "completion"], desc=None)


# Modules that only write up results: editing them must not throw away cached training.
_WRITE_UP = {
    "cli.py", "demo/instrument.py", "demo/plantings.py", "demo/plots.py", "demo/reference.py", "demo/report.py",
    "demo/run.py", "demo/stats.py",
}  # fmt: skip


def code_hash() -> str:
    """A hash of the fair_trl sources that training and evaluation run (everything but the write-up)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if name not in _WRITE_UP:
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """A short hash of everything a cached result depends on: `parts`, the code and the library versions."""
    import torch
    import transformers
    import trl

    record = {
        "version": CACHE_VERSION,
        "code": code_hash(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        **parts,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def warm_start(
    seed: int,
    pretrain,
    cache_dir: str | Path,
    key: str,
    steps: int,
    learning_rate: float,
    batch_size: int,
    evaluate=None,
) -> dict[str, Any]:
    """Train (or reuse) the warm start of `seed`; returns its record (path, seconds, step-0 evaluation).

    `evaluate(model, processor)` gives the step-0 evaluation stored with it. ``cpu_seconds`` counts the
    training and that evaluation, ``train_cpu_seconds`` the training alone.
    """
    target = Path(cache_dir) / key / f"seed{seed}"
    done = target / DONE_FILE
    if done.is_file():
        return {**json.loads(done.read_text()), "path": str(target), "cached": True}

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    from fair_trl.models import build_tiny_vlm

    started, cpu_started = time.perf_counter(), time.process_time()
    model, processor = build_tiny_vlm(seed=seed)
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            # Constant after a short warm-up: the tiny model learns to read the grid in a sudden jump
            # after a plateau, and a decaying rate would stall it on the plateau.
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=min(10, steps),
            max_steps=steps,
            max_length=None,
            logging_steps=steps + 1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=seed,
        )
        data = templated(pretrain, processor)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
        for quiet in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(quiet)
        trainer.train()
    model = trainer.model
    train_cpu_seconds = time.process_time() - cpu_started

    # Written next to the target and renamed into place, so a half-written warm start is never reused
    # and two processes training the same one both end with a complete copy.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".seed{seed}-"))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    # Evaluated from the saved copy, exactly as every RL run will load it.
    record: dict[str, Any] = {"seed": seed, "steps": steps}
    if evaluate is not None:
        loaded, loaded_processor = load_warm_start(staging)
        record["evaluation"] = evaluate(loaded, loaded_processor)
    # What the warm start cost in all: training, saving and its step-0 evaluation.
    record["seconds"] = round(time.perf_counter() - started, 2)
    record["cpu_seconds"] = round(time.process_time() - cpu_started, 2)
    record["train_cpu_seconds"] = round(train_cpu_seconds, 2)
    (staging / DONE_FILE).write_text(json.dumps(record))
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process got there first
    return {**record, "path": str(target), "cached": False}


def load_warm_start(path: str | Path):
    """(model, processor) saved by `warm_start`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
