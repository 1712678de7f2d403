"""How the run was launched: refuse processes that would each train alone, warn when FSDP was asked for and not used."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from accelerate.utils import DistributedType

__all__ = ["check_launch"]

logger = logging.getLogger(__name__)


def check_launch(accelerator: Any) -> None:
    """Refuse a launch whose processes would each train alone; warn when FSDP was asked for and is not used."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world_size = torch.distributed.get_world_size()
        if world_size != accelerator.num_processes:
            raise RuntimeError(
                f"launched as {world_size} processes, but accelerate set up a {accelerator.num_processes}-process "
                f"run ({accelerator.distributed_type}): each process would train alone on the whole data and write "
                "the same output_dir. On a machine without GPUs pass use_cpu=True (--use_cpu true) for CPU "
                "processes (gloo); otherwise check that every process sees its GPU"
            )
    asked_for_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked_for_fsdp and accelerator.distributed_type != DistributedType.FSDP:
        logger.warning(
            "The accelerate config asks for FSDP, but accelerate set up %s: FSDP is enabled for GPU-class devices "
            "only, so the model is replicated on every process (DDP), not sharded",
            accelerator.distributed_type,
        )
