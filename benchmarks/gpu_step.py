"""FairGRPOTrainer against GRPOTrainer on a GPU at MedGemma-4B's shapes: step time, FairGRPO's own cost,
peak memory, host-device syncs, and the estimator on GPU tensors.

The GPU machine this is written for has no network and no weights, so the model is a Gemma 3 VLM with
MedGemma-4B-IT's published config (`MEDGEMMA_4B`) and random weights, built on the GPU in bf16. Both
trainers run the same number of steps from the same weights and seed on the same synthetic clinical rows
(images included), one after the other, with HF generation (no vLLM). Each step starts from the same
seed in both, and the learning rate is 0, so both sample the same completions: the batches are
identical and the difference in step time is what FairGRPO adds. The reward is the parity of a
completion's token ids, so random weights still give every prompt rollouts that differ.

Printed and written to `--out/gpu_step.json`:
- median seconds per step of each trainer (first step dropped), and their difference;
- seconds inside FairGRPO's seam (`_compute_advantages`) and its fairness log, per step;
- peak GPU memory of each run (`torch.cuda.max_memory_allocated`);
- host-device syncs inside FairGRPO's seam and fairness log (`torch.cuda.set_sync_debug_mode("warn")`);
- the estimator on the device: advantages on the rewards' device and dtype, equal to the CPU's.

    python benchmarks/gpu_step.py                      # on a GPU: MedGemma-4B shapes, bf16, 16 prompts x 10
    python benchmarks/gpu_step.py --tiny               # on CPU: the tiny VLM, the same code paths (CI runs it)
    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 1 benchmarks/gpu_step.py --zero3

`--zero3` runs the same comparison under the accelerate launch above (DeepSpeed ZeRO-3 on one process);
it needs deepspeed importable and a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    TrainerCallback,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from fair_trl import FairGRPOAdvantage, FairGRPOConfig, FairGRPOTrainer  # noqa: E402
from fair_trl.data import build_dataset  # noqa: E402
from fair_trl.models import build_tiny_vlm  # noqa: E402

# google/medgemma-4b-it's config.json (Gemma 3 4B with a SigLIP-400M vision tower), as published.
MEDGEMMA_4B = {
    "text_config": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "sliding_window": 1024,
        "vocab_size": 262208,
        "max_position_embeddings": 131072,
        "rope_theta": 1_000_000.0,
    },
    "vision_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 896,
        "patch_size": 14,
        "vision_use_head": False,
    },
    "mm_tokens_per_image": 256,
}


def build_medgemma_shaped(device: str) -> tuple[torch.nn.Module, object]:
    """A random-weight Gemma 3 VLM of MedGemma-4B's shapes in bf16 on `device`, with a matching processor.

    The processor is the tiny VLM's (word-level tokenizer, image processor) resized to MedGemma's
    896 x 896 images and 256 soft tokens per image; the model's vocabulary keeps MedGemma's 262,208 rows,
    and ids the tokenizer lacks decode to nothing, which is all a random model's completions need.
    """
    tiny = build_tiny_vlm()[1]
    vision = MEDGEMMA_4B["vision_config"]
    side = vision["image_size"]
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(
            size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        tokenizer=tiny.tokenizer,
        chat_template=tiny.chat_template,
        image_seq_length=MEDGEMMA_4B["mm_tokens_per_image"],
    )
    tokenizer = processor.tokenizer
    config = Gemma3Config(
        text_config={
            **MEDGEMMA_4B["text_config"],
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config=vision,
        mm_tokens_per_image=MEDGEMMA_4B["mm_tokens_per_image"],
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Gemma3ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    return model, processor


def parity_reward(completion_ids, **_) -> list[float]:
    """1.0 when a completion's token ids sum to an even number: a reward that varies under random weights."""
    return [float(sum(ids) % 2 == 0) for ids in completion_ids]


class StepClock(TrainerCallback):
    """Seconds per optimizer step, with the device synchronised at both ends, each step reseeded alike."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds: list[float] = []
        self._start = 0.0

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        # Common random numbers: step k samples the same completions in both trainers.
        torch.manual_seed(1000 + state.global_step)
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.seconds.append(time.perf_counter() - self._start)


class MeasuredFairGRPOTrainer(FairGRPOTrainer):
    """FairGRPOTrainer that times its seam and fairness log and counts the host-device syncs inside them."""

    def __init__(self, *args, **kwargs):
        self.inside: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        super().__init__(*args, **kwargs)

    def _measured(self, name: str, call):
        cuda = self.args.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = call()
                if cuda:
                    torch.cuda.synchronize()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
            self.inside[name] += time.perf_counter() - start
        self.syncs[name] += sum("synchroniz" in str(w.message) for w in caught)
        for w in caught:
            if "synchroniz" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return result

    def _compute_advantages(self, rewards, inputs):
        return self._measured(
            "advantages", lambda: super(MeasuredFairGRPOTrainer, self)._compute_advantages(rewards, inputs)
        )

    def log_fairness(self):
        return self._measured("fairness_log", lambda: super(MeasuredFairGRPOTrainer, self).log_fairness())


def run(kind: str, model, processor, rows, options, device: str, out_dir: str) -> dict:
    common = dict(
        output_dir=os.path.join(out_dir, kind),
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        learning_rate=0.0,
        per_device_train_batch_size=options.micro_batch,
        gradient_accumulation_steps=options.prompts * options.generations // options.micro_batch,
        num_generations=options.generations,
        max_completion_length=options.completion_length,
        max_steps=options.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        gradient_checkpointing=device == "cuda",
    )
    if kind == "fair_grpo":
        trainer_class, config = (
            MeasuredFairGRPOTrainer,
            FairGRPOConfig(advantage_estimator="fair_grpo", fairness_logging_steps=1, **common),
        )
    else:
        trainer_class, config = GRPOTrainer, GRPOConfig(**common)
    trainer = trainer_class(
        model=model, reward_funcs=parity_reward, args=config, train_dataset=rows, processing_class=processor
    )
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    clock = StepClock(device)
    trainer.add_callback(clock)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    result = {
        "step_s": clock.seconds,
        "median_step_s": statistics.median(clock.seconds[1:] or clock.seconds),
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }
    if kind == "fair_grpo":
        steps = max(len(clock.seconds), 1)
        result["inside_s_per_step"] = {name: s / steps for name, s in trainer.inside.items()}
        result["syncs_per_step"] = (
            {name: n / steps for name, n in trainer.syncs.items()} if device == "cuda" else "n/a on CPU"
        )
    return result


def estimator_on_device(device: str, prompts: int, generations: int, steps: int = 20) -> dict:
    """FairGRPOAdvantage fed the same reward stream on `device` and on the CPU: placement and equality."""
    generator = torch.Generator().manual_seed(0)
    on_device, on_cpu = FairGRPOAdvantage(), FairGRPOAdvantage()
    domains = [f"d{(i // generations) % 3}" for i in range(prompts * generations)]
    groups = [
        None if (i // generations) % 5 == 0 else f"sex={'FM'[(i // generations) % 2]}" for i in range(len(domains))
    ]
    placed, largest = True, 0.0
    for _ in range(steps):
        rewards = (torch.rand(prompts * generations, generator=generator) < 0.4).float()
        expected = on_cpu(rewards, generations, domains, groups)
        got = on_device(rewards.to(device), generations, domains, groups)
        placed &= got.device == rewards.to(device).device and got.dtype == rewards.dtype
        largest = max(largest, (got.cpu() - expected).abs().max().item())
    return {"device": device, "placed_on_rewards_device_and_dtype": bool(placed), "max_abs_diff_vs_cpu": largest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny VLM on CPU (what CI runs)")
    parser.add_argument("--zero3", action="store_true", help="label the run as launched under ZeRO-3")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (16 on GPU, 4 with --tiny)")
    parser.add_argument("--generations", type=int, default=None, help="completions per prompt (10; 4 with --tiny)")
    parser.add_argument(
        "--micro-batch", type=int, default=None, help="completions per forward pass (20; 16 with --tiny)"
    )
    parser.add_argument("--completion-length", type=int, default=None, help="max new tokens (128; 8 with --tiny)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per trainer (the first is warm-up)")
    parser.add_argument("--out", default=os.environ.get("OUT", "outputs/gpu_step"), help="folder for gpu_step.json")
    options = parser.parse_args(argv)
    tiny = options.tiny
    for name, gpu_value, tiny_value in (
        ("prompts", 16, 4),
        ("generations", 10, 4),
        ("micro_batch", 20, 16),
        ("completion_length", 128, 8),
    ):
        if getattr(options, name) is None:
            setattr(options, name, tiny_value if tiny else gpu_value)
    if (options.prompts * options.generations) % options.micro_batch:
        parser.error("--micro-batch must divide prompts x generations")
    device = "cpu" if tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --tiny on a CPU")
    if options.zero3:
        import deepspeed  # noqa: F401  (a clear ImportError here, not deep inside accelerate)

    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*")
    hf_logging.set_verbosity_error()
    build = build_tiny_vlm if tiny else (lambda: build_medgemma_shaped(device))
    rows = build_dataset("synthetic", None, num_rows=max(200, 4 * options.prompts * options.steps))["train"]
    report: dict = {
        "machine": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "model": "tiny Gemma 3 VLM" if tiny else "Gemma 3 VLM, MedGemma-4B-IT config, random weights, bf16",
        "launch": "accelerate zero3.yaml, 1 process" if options.zero3 else "python",
        "prompts": options.prompts,
        "generations": options.generations,
        "completion_length": options.completion_length,
        "steps": options.steps,
    }
    with tempfile.TemporaryDirectory() as scratch:
        for kind in ("grpo", "fair_grpo"):
            model, processor = build()
            report[kind] = run(kind, model, processor, rows, options, device, scratch)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    report["fair_grpo_adds_s_per_step"] = report["fair_grpo"]["median_step_s"] - report["grpo"]["median_step_s"]
    report["estimator"] = estimator_on_device(device, options.prompts, options.generations)

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_step.json").write_text(json.dumps(report, indent=2) + "\n")
    fair, plain = report["fair_grpo"], report["grpo"]
    print(f"{report['model']} on {report['machine']} ({report['launch']}), {options.prompts} x {options.generations}")
    print(f"  median s/step: GRPO {plain['median_step_s']:.3f}, FairGRPO {fair['median_step_s']:.3f}")
    inside = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in fair["inside_s_per_step"].items())
    print(f"  FairGRPO's own additions per step: {inside}; syncs per step: {fair['syncs_per_step']}")
    if device == "cuda":
        print(f"  peak GPU memory GiB: GRPO {plain['peak_gpu_gib']:.1f}, FairGRPO {fair['peak_gpu_gib']:.1f}")
    print(f"  estimator on {device}: {report['estimator']}")
    print(f"  written: {out / 'gpu_step.json'}")
    return 0 if report["estimator"]["placed_on_rewards_device_and_dtype"] else 1


if __name__ == "__main__":
    sys.exit(main())
