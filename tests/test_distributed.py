"""Two CPU processes (torchrun, gloo): what every rank computes, logs, evaluates and resumes is the one global result.

One launch of tests/scripts/distributed_worker.py runs its scenarios (see its docstring) in the same two
processes; each test below reads what the ranks recorded. The estimator replay runs in this process. The last
tests launch the recipe itself with `accelerate launch` and the FSDP config on two CPU processes.
"""

import json
import math
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from fair_trl import FairGRPOAdvantage
from fair_trl.models import save_tiny_model

WORKER = Path(__file__).parent / "scripts" / "distributed_worker.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same(a: list[float], b: list[float]) -> bool:
    """Exact equality that treats NaN as equal to NaN (unscorable rollouts)."""
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


def worker_env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    model_dir = save_tiny_model(root / "model", kind="text")
    out = root / "out"
    out.mkdir()
    command = [
        str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(WORKER), str(model_dir), str(out),
    ]  # fmt: skip
    done = subprocess.run(command, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


# -- buffered generation: gradient_accumulation_steps 2, steps_per_generation 4 ---------------------------------


def test_two_processes_really_run_distributed_with_buffered_generation(ranks):
    for rank, result in enumerate(r["buffered"] for r in ranks):
        assert result["process_index"] == rank
        assert result["num_processes"] == 2
        assert result["distributed_type"] == "DistributedType.MULTI_CPU"
        assert result["backend"] == "gloo"
        # 4 optimizer steps of 2 micro-batches; one generation batch per 2 optimizer steps.
        assert result["global_step"] == 4
        assert [r["step"] for r in result["records"]] == [0, 2]
        assert len(result["micro_batches"]) == 8
    first, second = (r["buffered"] for r in ranks)
    for a, b in zip(first["records"], second["records"], strict=True):
        # Each rank generated for its own prompts; the estimator saw both ranks' rows, rank 0's first.
        assert a["local_prompts"] != b["local_prompts"]
        assert a["domains"] == [*a["local_domains"], *b["local_domains"]]
        assert len(a["rewards"]) == 2 * len(a["local_prompts"]) == 64  # 16 prompts x 4 over both ranks


def test_ranks_compute_identical_global_advantages_and_train_on_their_slices(ranks):
    first, second = (r["buffered"] for r in ranks)
    for a, b in zip(first["records"], second["records"], strict=True):
        assert a["step"] == b["step"]
        assert same(a["rewards"], b["rewards"])
        assert a["domains"] == b["domains"]
        assert a["groups"] == b["groups"]
        assert a["advantages"] == b["advantages"]  # bit for bit
        n = len(a["trained_on"])
        assert a["trained_on"] == a["advantages"][:n]
        assert b["trained_on"] == b["advantages"][n : 2 * n]
    for result in (first, second):
        # TRL shuffles each local generation batch and trains on it in steps_per_generation micro-batches:
        # together they are exactly the rank's slice, every completion once.
        for g, record in enumerate(result["records"]):
            micro = [a for batch in result["micro_batches"][4 * g : 4 * g + 4] for a in batch]
            assert sorted(micro) == sorted(record["trained_on"])
    assert first["weights_sha256"] == second["weights_sha256"]  # DDP kept the weights in step


def test_ranks_end_with_the_state_of_one_process_replaying_the_gathered_batches(ranks):
    first = ranks[0]["buffered"]
    state = first["state"]
    assert ranks[1]["buffered"]["state"] == state
    assert state["step"] == 2  # one estimator call per generation batch
    groups = [g for record in first["records"] for g in record["groups"]]
    assert None in groups and any(g is not None for g in groups)  # clustering ran as well
    replay = FairGRPOAdvantage(seed=first["seed"])
    nonzero = 0
    for record in first["records"]:
        rewards = torch.tensor(record["rewards"], dtype=torch.float32)
        advantages = replay(rewards, first["num_generations"], record["domains"], record["groups"])
        assert advantages.tolist() == record["advantages"]
        nonzero += int(advantages.abs().sum() > 0)
    assert nonzero > 0, "every batch had zero advantages: the comparison checked nothing"
    assert replay.state_dict() == state


# -- the fairness log when one rank has nothing to score --------------------------------------------------------


def test_fairness_log_with_an_empty_buffer_on_one_rank(ranks):
    first, second = (r["empty_rank"] for r in ranks)
    # Rank 1 only ever had the prompts without a reference; rank 0 those with one.
    assert all("case 2 " in p[0] or "case 6 " in p[0] for p in second["local_prompts"])
    assert [(e["step"], e["local"]) for e in first["fairness_logs"]] == [(1, 8), (2, 8)]
    assert [(e["step"], e["local"]) for e in second["fairness_logs"]] == [(1, 0), (2, 0)]
    # Both ranks logged rank 0's rollouts, the same numbers at the same steps.
    assert [h[0] for h in first["history"]] == [1, 2]
    assert first["history"] == second["history"]
    for a, b in zip(first["fairness_logs"], second["fairness_logs"], strict=True):
        assert a["logs"] == b["logs"] and "fairness/sex/f1" in a["logs"]


# -- evaluation: accelerate's even_batches padding (issue item 2) -------------------------------------------------


def test_eval_fairness_counts_each_row_once_despite_even_batches_padding(ranks):
    """5 prompts, eval batch 2 on each of 2 ranks: accelerate pads to 8 with copies of the first rows."""
    for result in (r["eval_padding"] for r in ranks):
        (scored,) = result["scored"]
        assert Counter(reference for reference, _, _ in scored) == Counter(result["references"])
        assert result["n"] == 5
    assert ranks[0]["eval_padding"]["metrics"] == ranks[1]["eval_padding"]["metrics"]
    assert "eval_fairness/sex/f1" in ranks[0]["eval_padding"]["metrics"]


# -- resume where only the saving rank's disk has the estimator state (issue item 6) ------------------------------


def test_resume_uses_rank_0s_state_on_a_rank_whose_checkpoint_lacks_it(ranks):
    first, second = (r["private_checkpoint"] for r in ranks)
    assert first["checkpoint"] != second["checkpoint"]  # rank 1 resumed from its own copy, without the state
    assert first["saved"]["step"] == 2
    for result in (first, second):
        assert result["loaded"]["estimator"] == result["saved"]
    assert first["loaded"]["keyer"] == second["loaded"]["keyer"] and first["loaded"]["keyer"]["rows"] > 0
    (a,), (b,) = first["records"], second["records"]
    assert a["advantages"] == b["advantages"] and any(x != 0 for x in a["advantages"])
    assert first["final_state"] == second["final_state"] and first["final_state"]["step"] == 3


# -- the recipe under recipes/accelerate/fsdp.yaml on two CPU processes --------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
RECIPE_WORKER = Path(__file__).parent / "scripts" / "recipe_worker.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"


@pytest.fixture(scope="module")
def recipe_ranks(tmp_path_factory):
    """recipes/fairmedgemma.py launched with the FSDP config, 2 CPU processes, 2 steps of a tiny MedGemma-like VLM.

    accelerate 1.15 enables FSDP for GPU-class devices only: with --use_cpu true the same launch runs the
    recipe as multi-CPU DDP (gloo), the nearest runnable path, which this checks (README, "Scaling out").
    Table 3's batch is shrunk to 4 prompts per generation batch, with 2 accumulation steps per optimizer step.
    """
    root = tmp_path_factory.mktemp("recipe_ddp")
    model_dir = save_tiny_model(root / "tiny", kind="vlm")
    command = [
        str(ACCELERATE), "launch", "--config_file", "recipes/accelerate/fsdp.yaml", "--num_processes", "2",
        "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(RECIPE_WORKER), str(root / "record"),
        "--config", "recipes/fairmedgemma.yaml", "--use_cpu", "true", "--model_name_or_path", str(model_dir),
        "--dataset_name", "synthetic", "--synthetic_num_rows", "64", "--use_vllm", "false", "--max_steps", "2",
        "--report_to", "none", "--output_dir", str(root / "out"), "--bf16", "false", "--push_to_hub", "false",
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--gradient_accumulation_steps", "2",
        "--steps_per_generation", "2", "--max_completion_length", "8", "--save_strategy", "no",
        "--max_eval_samples", "4", "--log_completions", "false",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"launch failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    records = [json.loads((root / f"record.rank{r}.json").read_text()) for r in range(2)]
    return {"ranks": records, "log": done.stdout + done.stderr, "out": root / "out"}


def test_recipe_with_the_fsdp_config_runs_as_ddp_on_two_cpu_processes(recipe_ranks):
    for rank, result in enumerate(recipe_ranks["ranks"]):
        assert result["process_index"] == rank and result["num_processes"] == 2
        assert result["distributed_type"] == "DistributedType.MULTI_CPU"
        assert not result["fsdp"] and result["model_class"] == "DistributedDataParallel"
        assert result["global_step"] == 2
    # Said, not silent: the config asked for FSDP and the run is not sharded.
    assert "asks for FSDP, but accelerate set up DistributedType.MULTI_CPU" in recipe_ranks["log"]
    # The recipe ran to its end: model, processor and the fairness card.
    for name in ("model.safetensors", "processor_config.json", "README.md"):
        assert (recipe_ranks["out"] / name).is_file(), name
    # The final audit: each rank answered every other test row; process 0 joined them in row order.
    audited = (recipe_ranks["out"] / "audit" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in audited] == ["0", "1", "2", "3"]  # --max_eval_samples 4
    assert sorted(p.name for p in (recipe_ranks["out"] / "audit").glob("predictions.rank*")) == [
        "predictions.rank0-of-2.jsonl", "predictions.rank1-of-2.jsonl"
    ]  # fmt: skip


def test_recipe_ranks_agree_on_the_advantages(recipe_ranks):
    first, second = recipe_ranks["ranks"]
    assert len(first["records"]) == 2  # one generation batch per optimizer step here
    for a, b in zip(first["records"], second["records"], strict=True):
        assert a["step"] == b["step"]
        assert same(a["rewards"], b["rewards"]) and len(a["rewards"]) == 16  # 4 prompts x 4 over both ranks
        assert a["advantages"] == b["advantages"]
    assert any(x != 0 for r in first["records"] for x in r["advantages"])
    assert first["estimator_state"] == second["estimator_state"]


# -- resume inside a later epoch ------------------------------------------------------------------------------------


def test_two_process_resume_inside_the_second_epoch_is_exact(ranks):
    """accelerate's batch-skipping wrapper for a multi-process resume does not pass the epoch to the sampler."""
    for result in (r["epoch_resume"] for r in ranks):
        full, resumed = result["full"], result["resumed"]
        assert [r["step"] for r in full] == [0, 1, 2, 3, 4] and [r["step"] for r in resumed] == [4]
        assert resumed[0] == full[4]
        assert full[4]["local_prompts"] != full[1]["local_prompts"]  # epoch 2's order is its own
