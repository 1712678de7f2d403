"""Generation backends behind one interface: `backend.generate(prompts) -> completions`.

Both backends receive the same rendered prompt text: the conversation of each row through the model's own
processor chat template (`render_prompts`), so a difference between their answers is the engine's, never
the prompt's. `hf` runs transformers' ``generate`` (CPU or GPU); `vllm` an offline ``vllm.LLM`` of its
own (nothing colocated). Greedy unless a temperature is given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "BACKENDS",
    "GenerationBackend",
    "GenerationSettings",
    "HFBackend",
    "PromptInput",
    "VLLMBackend",
    "is_multimodal",
    "load_backend",
    "load_processor",
    "render_prompts",
    "require_chat_template",
]

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")


@dataclass
class PromptInput:
    """One row, ready for any backend: the rendered prompt text and its decoded images."""

    text: str
    images: list[Any] = field(default_factory=list)


class GenerationBackend(Protocol):
    name: str
    processor: Any

    def generate(self, prompts: Sequence[PromptInput]) -> list[str]:
        """One completion per prompt, in order, without the prompt and special tokens."""
        ...


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def is_multimodal(processor: Any) -> bool:
    return getattr(processor, "image_processor", None) is not None


def check_model_source(model: str) -> None:
    """Refuse a local model path that does not exist, before transformers reads it as a Hub repository id."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"--model {model}: a file, not a model folder (one holding config.json)")
        return
    # A Hub id is "name" or "owner/name": anything else that is not on disk was meant as a path.
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model:
        raise ValueError(f"--model {model}: no such folder (a local model path; a Hub id reads owner/name)")


def load_processor(model: str, chat_template: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's processor (a tokenizer for a text-only model), padding on the left for batched generation.

    `chat_template`: a Jinja template file that replaces (or supplies) the processor's own.
    """
    from transformers import AutoProcessor

    check_model_source(model)
    processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    _tokenizer(processor).padding_side = "left"  # decoder-only models continue from the last position
    if chat_template is not None:
        template = Path(chat_template).read_text(encoding="utf-8")
        processor.chat_template = template
        if _tokenizer(processor) is not processor:
            _tokenizer(processor).chat_template = template
    return processor


def _chat_template(processor: Any) -> str | None:
    return getattr(processor, "chat_template", None) or getattr(_tokenizer(processor), "chat_template", None)


def _text_only(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # A text-only model's template may expect string contents: keep the text parts, drop the images.
    out = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str):
            content = "".join(p.get("text") or "" for p in content or () if p.get("type") == "text")
        out.append({"role": message["role"], "content": content})
    return out


def require_chat_template(processor: Any, model_name: str = "the model") -> None:
    if not _chat_template(processor):
        raise ValueError(
            f"the processor of {model_name} has no chat template, and fair-trl audit renders each row's "
            "conversation with it: use an instruct/chat model, or pass --chat-template FILE (a Jinja template)"
        )


def render_prompts(processor: Any, conversations: Sequence[Any], model_name: str = "the model") -> list[str]:
    """Each conversation (a list of messages, or a plain string as one user turn) as the model's prompt text."""
    require_chat_template(processor, model_name)
    multimodal = is_multimodal(processor)
    texts = []
    for conversation in conversations:
        messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
        if not multimodal:
            messages = _text_only(messages)
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return texts


class HFBackend:
    """transformers ``generate`` on a loaded model (from a path or Hub id, or one already in memory)."""

    name = "hf"

    def __init__(self, model: Any, processor: Any, settings: GenerationSettings):
        self.model, self.processor, self.settings = model, processor, settings
        self.model.eval()

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        processor: Any,
        settings: GenerationSettings,
        device: str | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> HFBackend:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
        try:
            loaded = AutoModelForImageTextToText.from_pretrained(model, **kwargs)
        except ValueError:  # not an image-text-to-text architecture: a causal LM answers text only
            loaded = AutoModelForCausalLM.from_pretrained(model, **kwargs)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(loaded.to(device), processor, settings)

    def generate(self, prompts: Sequence[PromptInput]) -> list[str]:
        import torch

        texts = [p.text for p in prompts]
        # The chat template already wrote the BOS token; a tokenizer that adds its own would double it.
        if is_multimodal(self.processor) and any(p.images for p in prompts):
            inputs = self.processor(
                text=texts,
                images=[p.images for p in prompts],
                padding=True,
                return_tensors="pt",
                add_special_tokens=False,
            )
        else:
            inputs = _tokenizer(self.processor)(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        inputs = inputs.to(self.model.device)
        sample = self.settings.temperature > 0
        options: dict[str, Any] = {"max_new_tokens": self.settings.max_new_tokens, "do_sample": sample}
        if sample:
            torch.manual_seed(self.settings.seed)
            options["temperature"] = self.settings.temperature
        else:  # the model's generation_config may ask for sampling; greedy means no sampling knobs at all
            options.update(temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            output = self.model.generate(**inputs, **options)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return _tokenizer(self.processor).batch_decode(new_tokens, skip_special_tokens=True)


# Models whose image tokens attend to each other both ways (a prefix-LM mask), as vLLM lists them.
_BIDIRECTIONAL_IMAGE_MODELS = ("gemma3", "paligemma")


def _warn_on_cpu_image_attention(llm: Any, processor: Any) -> None:
    # Measured on the tiny Gemma 3 (tests/test_vllm.py): vLLM's CPU attention has no prefix-LM mask, so image
    # tokens attend causally there, and its answers equal transformers' only with the mask made causal.
    from fair_trl.vllm_compat import vllm_on_cpu

    model_type = getattr(llm.llm_engine.model_config.hf_config, "model_type", None)
    if is_multimodal(processor) and model_type in _BIDIRECTIONAL_IMAGE_MODELS and vllm_on_cpu():
        logger.warning(
            "vLLM's CPU attention attends causally over %s's image tokens, where transformers attends both ways: "
            "answers to image prompts can differ from --backend hf's (vLLM's FlashAttention backend on GPUs "
            "implements the mask; not checked here)",
            model_type,
        )


class VLLMBackend:
    """An offline ``vllm.LLM`` of its own on the model's path or Hub id."""

    name = "vllm"

    def __init__(self, model: str, processor: Any, settings: GenerationSettings, **llm_kwargs: Any):
        from vllm import LLM, SamplingParams

        self.processor, self.settings = processor, settings
        options = {"seed": settings.seed, **llm_kwargs}
        if is_multimodal(processor):
            options.setdefault("limit_mm_per_prompt", {"image": 1})
        self.llm = LLM(model=model, **options)
        _warn_on_cpu_image_attention(self.llm, processor)
        self.sampling = SamplingParams(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            seed=settings.seed if settings.temperature > 0 else None,
        )

    def generate(self, prompts: Sequence[PromptInput]) -> list[str]:
        requests = []
        for p in prompts:
            request: dict[str, Any] = {"prompt": p.text}
            if p.images:
                request["multi_modal_data"] = {"image": p.images[0] if len(p.images) == 1 else p.images}
            requests.append(request)
        outputs = self.llm.generate(
            requests, self.sampling, use_tqdm=False, tokenization_kwargs={"add_special_tokens": False}
        )
        # Decoded by the model's own tokenizer, as the hf backend decodes: vLLM's incremental detokenizer
        # can space a word-level vocabulary differently, and the same tokens must read the same.
        return _tokenizer(self.processor).batch_decode(
            [list(o.outputs[0].token_ids) for o in outputs], skip_special_tokens=True
        )


def load_backend(
    name: str,
    model: str,
    settings: GenerationSettings,
    *,
    chat_template: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    vllm_kwargs: Mapping[str, Any] | None = None,
) -> GenerationBackend:
    """Backend `name` (`BACKENDS`) on `model`, a local path or Hub id."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    processor = load_processor(model, chat_template, trust_remote_code)
    require_chat_template(processor, model)  # before loading weights or starting an engine
    if name == "hf":
        return HFBackend.from_pretrained(model, processor, settings, device, dtype, trust_remote_code)
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise ValueError(f"--backend vllm needs vLLM installed (pip install 'fair-trl[vllm]'): {err}") from None
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, **(vllm_kwargs or {})}
    return VLLMBackend(model, processor, settings, **kwargs)
