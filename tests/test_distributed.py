"""Two CPU processes (torchrun, gloo): every rank computes the same global FairGRPO advantages and state.

The worker (tests/scripts/distributed_worker.py) trains 4 steps with 2 processes x 4 prompts x 4 generations on
three domains, a third of the rows without demographics (so k-means runs), and dumps per step the gathered rewards,
domains and groups with the global advantages its `_compute_advantages` returned. The test compares the ranks with
each other and with one fresh `FairGRPOAdvantage` replaying the same gathered batches in this process.
"""

import json
import math
import os
import socket
import subprocess
import sys
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


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    model_dir = save_tiny_model(root / "model", kind="text")
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [
        str(TORCHRUN),
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(WORKER),
        str(model_dir),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_processes_really_run_distributed(ranks):
    for rank, result in enumerate(ranks):
        assert result["process_index"] == rank
        assert result["num_processes"] == 2
        assert result["distributed_type"] == "DistributedType.MULTI_CPU"
        assert result["backend"] == "gloo"
        assert result["global_step"] == 4 and len(result["records"]) == 4
    for first, second in zip(ranks[0]["records"], ranks[1]["records"], strict=True):
        # Each rank generated for its own prompts; the estimator saw both ranks' rows, rank 0's first.
        assert first["local_prompts"] != second["local_prompts"]
        assert first["domains"] == [*first["local_domains"], *second["local_domains"]]
        assert len(first["rewards"]) == 2 * len(first["local_prompts"]) == 32


def test_ranks_compute_identical_global_advantages_every_step(ranks):
    for first, second in zip(ranks[0]["records"], ranks[1]["records"], strict=True):
        assert first["step"] == second["step"]
        assert same(first["rewards"], second["rewards"])
        assert first["domains"] == second["domains"]
        assert first["groups"] == second["groups"]
        assert first["advantages"] == second["advantages"]  # bit for bit
        # Each rank trains on its own slice of the one global result.
        n = len(first["trained_on"])
        assert first["trained_on"] == first["advantages"][:n]
        assert second["trained_on"] == second["advantages"][n : 2 * n]
    # DDP kept the weights in step as well.
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]


def test_ranks_end_with_identical_estimator_state_equal_to_one_process_replay(ranks):
    state = ranks[0]["state"]
    assert ranks[1]["state"] == state
    assert state["step"] == 4
    # Clustering ran: some prompts had no demographics and their reward vectors are pooled.
    groups = [g for record in ranks[0]["records"] for g in record["groups"]]
    assert None in groups and any(g is not None for g in groups)
    assert sum(len(pool) for pool in state["pools"].values()) == sum(g is None for g in groups) // 4

    replay = FairGRPOAdvantage(seed=ranks[0]["seed"])
    nonzero = 0
    for record in ranks[0]["records"]:
        rewards = torch.tensor(record["rewards"], dtype=torch.float32)
        advantages = replay(rewards, ranks[0]["num_generations"], record["domains"], record["groups"])
        assert advantages.tolist() == record["advantages"]
        nonzero += int(advantages.abs().sum() > 0)
    assert nonzero > 0, "every step had zero advantages: the comparison checked nothing"
    assert replay.state_dict() == state
