"""Weight names vLLM reads, checkpoints it can serve, vLLM-compatible tiny models, and Gemma 3 resumes.

No vLLM needed: these run in `make test`; tests/test_vllm.py runs the same code against real vLLM.
"""

import os

import pytest
import torch
from conftest import length_reward
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.checkpoints import checkpoint_weight_names, load_converted_weights
from fair_trl.data import build_dataset
from fair_trl.models import VLLM_MIN_HEAD_DIM, build_tiny_text_model, build_tiny_vlm, save_tiny_model
from fair_trl.vllm_compat import (
    _sync_by_reload,
    adapt_vllm_generation,
    to_vllm_checkpoint,
    vllm_on_cpu,
    vllm_weight_name,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


PATCH = "vision_tower.embeddings.patch_embedding.weight"
IN_TOWER = "vision_tower.vision_model."


@pytest.mark.parametrize(
    ("name", "model_type", "expected"),
    [
        (f"model.{PATCH}", "gemma3", f"model.{IN_TOWER}embeddings.patch_embedding.weight"),
        ("vision_tower.encoder.layers.0.mlp.fc1.bias", "gemma3", f"{IN_TOWER}encoder.layers.0.mlp.fc1.bias"),
        (f"{IN_TOWER}post_layernorm.weight", "gemma3", f"{IN_TOWER}post_layernorm.weight"),
        ("model.language_model.norm.weight", "gemma3", "model.language_model.norm.weight"),
        (f"model.{PATCH}", "qwen3", f"model.{PATCH}"),
        ("model.layers.0.vision_tower.x", "gemma3", "model.layers.0.vision_tower.x"),
    ],
)
def test_vllm_weight_name(name, model_type, expected):
    assert vllm_weight_name(name, model_type) == expected


def test_a_saved_tiny_vlm_is_in_vllms_layout_and_reloads_unchanged(tmp_path):
    path = save_tiny_model(tmp_path / "vlm", kind="vlm")
    names = checkpoint_weight_names(path)
    assert any(n.startswith("vision_tower.vision_model.") for n in names)
    assert not any(n.startswith("vision_tower.embeddings") for n in names)
    built, _ = build_tiny_vlm(seed=0)
    reloaded = AutoModelForImageTextToText.from_pretrained(path)
    for name, tensor in built.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert to_vllm_checkpoint(path, "gemma3") == 0  # already in that layout
    assert not list(path.glob("*.tmp"))


def test_to_vllm_checkpoint_renames_a_transformers_save_in_place(tmp_path):
    model, processor = build_tiny_vlm(seed=1)
    model.save_pretrained(tmp_path)
    before = load_file(tmp_path / "model.safetensors")
    changed = to_vllm_checkpoint(tmp_path, model.config.model_type)
    after = load_file(tmp_path / "model.safetensors")
    assert changed == sum(k.startswith("vision_tower.") for k in before) > 0
    assert {vllm_weight_name(k, "gemma3") for k in before} == set(after)
    for key, tensor in before.items():
        assert torch.equal(after[vllm_weight_name(key, "gemma3")], tensor)
    # A causal LM has nothing to rename.
    text, _ = build_tiny_text_model()
    text.save_pretrained(tmp_path / "text")
    assert to_vllm_checkpoint(tmp_path / "text", text.config.model_type) == 0


def test_vllm_compatible_tiny_models_have_heads_vllm_cpu_accepts():
    text, _ = build_tiny_text_model(vllm_compatible=True)
    assert text.config.head_dim == VLLM_MIN_HEAD_DIM
    vlm, processor = build_tiny_vlm(vllm_compatible=True)
    assert vlm.config.text_config.head_dim == VLLM_MIN_HEAD_DIM
    vision = vlm.config.vision_config
    assert vision.hidden_size // vision.num_attention_heads >= VLLM_MIN_HEAD_DIM
    vocab = processor.tokenizer.get_vocab()
    assert all("\n" * k in vocab for k in range(1, 5))
    # The defaults stay as they were: no newline tokens, so no token id moves for existing users.
    default, default_processor = build_tiny_vlm()
    assert "\n" not in default_processor.tokenizer.get_vocab()
    assert len(default_processor.tokenizer) == len(processor.tokenizer) - 4


class FakeGeneration:
    """The parts of TRL's VLLMGeneration the adapter touches."""

    def __init__(self, mode, names):
        self.mode = mode
        self._names = names

    def _iter_named_params(self):
        for name in self._names:
            yield name, torch.zeros(1)

    def sync_weights(self):
        return "trl"


def test_the_adapter_renames_in_colocate_mode_only_and_keeps_trls_sync_off_cpu():
    names = ["model.vision_tower.embeddings.patch_embedding.weight", "model.language_model.norm.weight"]
    colocate = FakeGeneration("colocate", names)
    adapt_vllm_generation(colocate, "gemma3")
    assert [n for n, _ in colocate._iter_named_params()] == [vllm_weight_name(n, "gemma3") for n in names]
    # TRL's own sync, unless vLLM runs on its CPU backend here (only in make test-vllm's environment).
    assert (getattr(colocate.sync_weights, "__func__", None) is _sync_by_reload) == vllm_on_cpu()
    server = FakeGeneration("server", names)
    adapt_vllm_generation(server, "gemma3")
    assert [n for n, _ in server._iter_named_params()] == names


def test_load_converted_weights_leaves_a_model_whose_names_match_alone(tmp_path):
    model, _ = build_tiny_text_model(seed=0)
    model.save_pretrained(tmp_path)
    other, _ = build_tiny_text_model(seed=4)
    assert not load_converted_weights(other, tmp_path)  # tied lm_head saved once is not "missing"
    assert load_converted_weights(other, tmp_path / "absent") is False


def test_resuming_a_gemma3_run_restores_its_weights(tmp_path):
    """transformers' Trainer loads a checkpoint with a raw load_state_dict: for Gemma 3 no name matches,
    nothing is loaded, and the run would silently continue from the weights it was started with."""
    data = build_dataset("synthetic", None, num_rows=32, seed=0)["train"]

    def trainer(seed):
        model, processor = build_tiny_vlm(seed=seed)
        args = FairGRPOConfig(
            output_dir=str(tmp_path / "out"),
            use_cpu=True,
            bf16=False,
            learning_rate=5e-2,
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=4,
            max_steps=1,
            save_strategy="steps",
            save_steps=1,
            report_to="none",
            gradient_checkpointing=False,
            fairness_logging_steps=0,
            disable_tqdm=True,
        )
        return FairGRPOTrainer(
            model=model, reward_funcs=length_reward, args=args, train_dataset=data, processing_class=processor
        )

    trainer(seed=0).train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    saved = AutoModelForImageTextToText.from_pretrained(checkpoint).state_dict()
    fresh = trainer(seed=5)
    assert not torch.equal(fresh.model.state_dict()["lm_head.weight"], saved["lm_head.weight"])
    fresh._load_from_checkpoint(str(checkpoint))
    for name, tensor in fresh.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    AutoProcessor.from_pretrained(checkpoint)
