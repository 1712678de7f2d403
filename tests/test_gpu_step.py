"""`benchmarks/gpu_step.py`, the first-GPU-step check, kept working on CPU (`--tiny`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_step import MEDGEMMA_4B, build_medgemma_shaped  # noqa: E402  (benchmarks/ is not a package)


def test_tiny_mode_runs_both_trainers_and_checks_the_estimator(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--tiny", "--steps", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_step.json").read_text())
    assert report["machine"] == "cpu" and (report["prompts"], report["generations"]) == (4, 4)
    for kind in ("grpo", "fair_grpo"):
        assert len(report[kind]["step_s"]) == 2 and all(s > 0 for s in report[kind]["step_s"])
    inside = report["fair_grpo"]["inside_s_per_step"]
    assert inside["advantages"] > 0 and inside["fairness_log"] > 0
    assert report["estimator"] == {
        "device": "cpu",
        "placed_on_rewards_device_and_dtype": True,
        "max_abs_diff_vs_cpu": 0.0,
    }
    assert "FairGRPO's own additions per step" in done.stdout


def test_medgemma_shaped_model_and_processor_agree():
    # Built on the meta device: the shapes without the 8.6 GB of weights.
    model, processor = build_medgemma_shaped("meta")
    assert 4.2e9 < sum(p.numel() for p in model.parameters()) < 4.4e9  # MedGemma-4B: 4.3 B parameters
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    from fair_trl.data import build_dataset

    row = build_dataset("synthetic", None, num_rows=20)["train"][0]
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True)
    encoded = processor(text=[text], images=[[row["image"]]], return_tensors="pt")
    side = MEDGEMMA_4B["vision_config"]["image_size"]
    assert tuple(encoded["pixel_values"].shape) == (1, 3, side, side)
    image_tokens = int((encoded["input_ids"] == processor.tokenizer.image_token_id).sum())
    assert image_tokens == MEDGEMMA_4B["mm_tokens_per_image"] == model.config.mm_tokens_per_image
