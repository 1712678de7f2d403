"""Model weights on resume, for models whose saved names differ from their module names.

transformers 5.x saves a model such as Gemma 3 (MedGemma) under its checkpoint layout
(``language_model.model.*``, ``vision_tower.*``) and maps those names back to its modules
(``model.language_model.*``) only inside ``from_pretrained``. ``Trainer._load_from_checkpoint`` reads
the file with a raw ``load_state_dict(..., strict=False)``: for such a model every key misses, nothing is
loaded, and training resumes from the weights the run started with, with only a logged warning. This
module loads the checkpoint through ``from_pretrained`` instead, and checks that every weight arrived.
"""

from __future__ import annotations

import os

import torch

__all__ = ["checkpoint_weight_names", "load_converted_weights"]

SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"


def checkpoint_weight_names(folder: str | os.PathLike) -> set[str] | None:
    """The weight names stored in a checkpoint folder's safetensors files; None when it has none."""
    import json

    from safetensors import safe_open

    folder = os.fspath(folder)
    index = os.path.join(folder, SAFE_WEIGHTS_INDEX)
    if os.path.exists(index):
        with open(index) as f:
            return set(json.load(f)["weight_map"])
    path = os.path.join(folder, SAFE_WEIGHTS)
    if not os.path.exists(path):
        return None
    with safe_open(path, framework="pt") as f:
        return set(f.keys())


def load_converted_weights(model: torch.nn.Module, folder: str | os.PathLike) -> bool:
    """Load `folder`'s weights into `model` when their names are not the model's own; True if it did.

    A model whose module names match the file (most causal LMs) is left alone: the raw load already
    worked. Otherwise the checkpoint is read with ``from_pretrained`` (which applies the model's name
    conversion) and copied in with ``strict=True``, so a weight that still fails to match raises instead
    of silently keeping its old value.
    """
    stored = checkpoint_weight_names(folder)
    if stored is None or not hasattr(model, "from_pretrained"):
        return False
    state = model.state_dict()
    # A tied weight (lm_head = embeddings) is saved once: it is not missing if its storage was loaded.
    loaded_storage = {state[name].data_ptr() for name in state.keys() & stored}
    if all(state[name].data_ptr() in loaded_storage for name in state.keys() - stored):
        return False
    first = next(model.parameters())
    loaded = type(model).from_pretrained(os.fspath(folder), config=model.config, dtype=first.dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return True
