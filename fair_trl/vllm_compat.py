"""What TRL's vLLM path needs from fair-trl: weight names vLLM's loaders read, and weight sync on its CPU backend.

Two gaps, both measured with TRL 1.16, transformers 5.17 and vLLM 0.31:

* **Names.** transformers 5.x names a SigLIP vision tower's weights ``vision_tower.embeddings.*`` (and saves
  them so), while vLLM's Gemma 3 loader reads ``vision_tower.vision_model.*`` (the layout of the released
  MedGemma and Gemma 3 checkpoints). Without a mapping a colocated run fails at its first weight sync and a
  saved FairMedGemma cannot be served with vLLM. transformers loads either layout, so checkpoints are
  written in vLLM's, and sync sends vLLM's names. This holds on any device.
* **CPU sync.** On vLLM's CPU backend every linear layer's weights are repacked for oneDNN after loading,
  so the per-parameter ``model.load_weights([(name, tensor)])`` that TRL's colocate sync calls fails
  (``'Parameter' object has no attribute 'weight_loader'``). vLLM's own ``reload_weights``, given all
  weights at once, repacks them again; on that backend sync goes through it. A language-model head tied
  to the embeddings (Gemma 3, the tiny models) receives no weight of its own in that reload, so vLLM
  keeps its GEMM packed from the old embeddings: it is packed again after each reload.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from types import MethodType
from typing import Any

import torch

__all__ = [
    "adapt_vllm_generation",
    "to_vllm_checkpoint",
    "vllm_on_cpu",
    "vllm_weight_name",
]

# Model types whose vision tower is SigLIP under the name `vision_tower` (vLLM reads `vision_model.` in it).
_SIGLIP_TOWER_MODELS = frozenset({"gemma3"})
_TOWER = "vision_tower."
_SIGLIP_INNER = "vision_model."


def vllm_weight_name(name: str, model_type: str | None) -> str:
    """The name vLLM's loader reads for the transformers weight `name` of a `model_type` model."""
    if model_type not in _SIGLIP_TOWER_MODELS:
        return name
    head, sep, rest = name.partition(_TOWER)
    if not sep or rest.startswith(_SIGLIP_INNER) or head not in ("", "model."):
        return name
    return f"{head}{_TOWER}{_SIGLIP_INNER}{rest}"


def vllm_on_cpu() -> bool:
    """Whether vLLM runs on its CPU backend here (False when vLLM is not installed)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


def adapt_vllm_generation(generation: Any, model_type: str | None) -> None:
    """Make a TRL `VLLMGeneration` send weights under vLLM's names, and sync through vLLM's reload on CPU.

    Only its colocate mode is changed: in server mode the weights travel to a vLLM server, whose own
    loader maps names and whose platform this process does not know.
    """
    if getattr(generation, "mode", None) != "colocate":
        return
    iter_named = generation._iter_named_params

    def renamed(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in iter_named():
            yield vllm_weight_name(name, model_type), tensor

    generation._iter_named_params = MethodType(renamed, generation)
    if vllm_on_cpu():
        generation.sync_weights = MethodType(_sync_by_reload, generation)


def _sync_by_reload(generation: Any) -> None:
    """Colocated sync on vLLM's CPU backend: one `reload_weights` call with every weight, then a cache reset."""
    if generation.enable_sleep_mode:
        generation.llm.wake_up(tags=["weights"])
        generation._llm_weights_sleeping = False
    # Copies: the trainer keeps updating its parameters in place, and vLLM repacks what it is given.
    weights = [(name, tensor.detach().clone()) for name, tensor in generation._iter_named_params()]
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=weights)
    _repack_heads(runner.model)
    generation.llm.reset_prefix_cache()


def _repack_heads(model: torch.nn.Module) -> None:
    """Pack every language-model head's CPU GEMM again from its current (possibly tied) weight."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    for module in model.modules():
        if isinstance(module, ParallelLMHead) and getattr(module, "quant_method", None) is not None:
            module.quant_method.process_weights_after_loading(module)


def to_vllm_checkpoint(folder: str | os.PathLike, model_type: str | None) -> int:
    """Rename a saved checkpoint's weights in `folder` to the names vLLM reads; returns how many changed.

    Rewrites each safetensors file (and the index) through a temporary file and `os.replace`, so a
    kill leaves either the old file or the new one, never half of one.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    if model_type not in _SIGLIP_TOWER_MODELS:
        return 0
    changed = 0
    folder = os.fspath(folder)
    for file in sorted(os.listdir(folder)):
        if not file.endswith(".safetensors"):
            continue
        path = os.path.join(folder, file)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
            names = list(f.keys())
            renames = {n: vllm_weight_name(n, model_type) for n in names}
            if all(old == new for old, new in renames.items()):
                continue
            tensors = {renames[n]: f.get_tensor(n) for n in names}
        changed += sum(old != new for old, new in renames.items())
        save_file(tensors, path + ".tmp", metadata=metadata)
        os.replace(path + ".tmp", path)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            content = json.load(f)
        content["weight_map"] = {vllm_weight_name(k, model_type): v for k, v in content["weight_map"].items()}
        with open(index + ".tmp", "w") as f:
            json.dump(content, f, indent=2)
        os.replace(index + ".tmp", index)
    return changed
