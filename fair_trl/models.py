"""Tiny, offline-buildable models for tests and demos.

Real clinical VLMs (MedGemma, Qwen2.5-VL) cannot be downloaded in CI or on air-gapped machines, yet the
training code must be exercised end to end through TRL's ``GRPOTrainer``. These builders create randomly
initialised models of the same architectures, a few tens of thousands of parameters each, together with a
word-level tokenizer and chat template, so that a GRPO step runs on CPU in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    Gemma3TextConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipVisionConfig,
)

from fair_trl.vllm_compat import to_vllm_checkpoint

__all__ = [
    "VLLM_MIN_HEAD_DIM",
    "VOCAB",
    "build_tiny_text_model",
    "build_tiny_vlm",
    "save_tiny_model",
]

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
BOS_TOKEN = "<bos>"
UNK_TOKEN = "<unk>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
BOI_TOKEN = "<start_of_image>"
EOI_TOKEN = "<end_of_image>"
IMAGE_TOKEN = "<image_soft_token>"

# pad/eos/bos first so their ids (0, 1, 2) match Gemma's defaults.
_SPECIAL_TOKENS = [
    PAD_TOKEN,
    EOS_TOKEN,
    BOS_TOKEN,
    UNK_TOKEN,
    IM_START,
    IM_END,
    START_OF_TURN,
    END_OF_TURN,
    BOI_TOKEN,
    EOI_TOKEN,
    IMAGE_TOKEN,
]

# Words containing punctuation that must stay whole; registered as (non-special) added tokens so the
# punctuation pre-tokenizer never splits them, and kept visible when decoding with skip_special_tokens.
_UNSPLIT_WORDS = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed", "BI-RADS"]

_ROLE_WORDS = ["system", "user", "assistant", "model", "tool"]

_DIGITS = [str(d) for d in range(10)]

_PUNCTUATION = list(".,:;!?'\"()[]{}-/*+=%<>_#&|\\")

_PROMPT_WORDS = """
a an the this that these those is are was were be been being it its of in on at to for from with by as
and or not no yes if then than so but do does did can could should would will may might must please
what which who where when why how answer answers question questions choose select pick option options one
only single best most likely final reasoning reason think step steps first second then finally output put
your you i we me my our image images picture photo scan view shown show shows showing given following below
above based provide provided describe description classify classification diagnose diagnosis diagnostic
label labels finding findings present absent presence absence normal abnormal positive negative patient
patients medical clinical radiology radiograph radiographs chest x ray xray ct mri ultrasound mammogram
mammography dermoscopy dermoscopic skin lesion lesions breast lung lungs heart brain left right bilateral
mass masses nodule nodules opacity opacities tissue area region sign signs disease diseases condition
conditions severity grade category categories risk level type types case study report assessment
evidence likely unlikely possible probable suspicious benign malignant cancer tumor tumour
inside box boxed format formatted following within between brackets tags tag example e g
The This What Which Is Are Does Do Answer Question Please You Given Based Classify Choose Select Look
Options Option Reasoning Final Image Patient Findings Diagnosis Label Yes
""".split()

_CLINICAL_WORDS = """
Atelectasis Cardiomegaly Consolidation Edema Effusion Pleural Emphysema Fibrosis Fracture Hernia
Infiltration Mass Nodule Pneumonia Pneumothorax Thickening Lesion Opacity Enlarged Cardiomediastinum
Support Devices Device Finding No Has COVID Hemorrhage Malignant Benign Normal Abnormal Lung
MEL NV BCC AKIEC BKL DF VASC SCC OTHER Melanoma Nevus Basal Cell Carcinoma Actinic Keratosis Keratoses
Seborrheic Dermatofibroma Vascular Squamous Intraepithelial Bowen
BIRADS Density Calcification Calcifications Architectural Distortion Asymmetry
Glaucoma Retinopathy Diabetic Cataract Healthy Tuberculosis Covid Viral Bacterial
Fatty Dense Scattered Heterogeneous Extremely Almost Entirely
""".split()


# Words of the data schema's prompts (fair_trl.data.schema); appended last so earlier token ids never move.
_SCHEMA_WORDS = """
Other BE FIRST MUST Separate about commas enclosed internal monologue more process several CT head hemorrhage
intracranial slice frame indicate
""".split()


def _dedupe(words: list[str]) -> list[str]:
    return list(dict.fromkeys(words))


# Fixed so that token ids (and therefore any saved tiny checkpoint) never depend on set ordering.
VOCAB: list[str] = _dedupe(
    _SPECIAL_TOKENS
    + _ROLE_WORDS
    + _UNSPLIT_WORDS
    + _DIGITS
    + _PUNCTUATION
    + _PROMPT_WORDS
    + _CLINICAL_WORDS
    + _SCHEMA_WORDS
)

# ChatML as used by Qwen instruct models; content may be a string or a list of typed parts.
TEXT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# Gemma 3 turn format; an image part renders as the begin-of-image token, which Gemma3Processor expands
# into boi + image_seq_length soft tokens + eoi.
VLM_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# vLLM's CPU attention supports head sizes 32-512 only.
VLLM_MIN_HEAD_DIM = 32

_IMAGE_SIZE = 32
_PATCH_SIZE = 8
_MM_TOKENS_PER_IMAGE = 4


def _build_backend_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(VOCAB)}, unk_token=UNK_TOKEN))
    # Digits are split individually so any number maps onto the ten digit tokens instead of <unk>.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    # WordPiece joins words with spaces and glues sentence punctuation back on; the replacements on the
    # fused string then restore "\boxed{X}", multi-digit numbers and hyphenated words ("COVID-19") so
    # answer-extraction regexes see the usual format.
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.WordPiece(prefix="##", cleanup=True),
            decoders.Fuse(),
            decoders.Replace(Regex(r"\s*\{\s*"), "{"),
            decoders.Replace(Regex(r"\s+\}"), "}"),
            decoders.Replace(Regex(r"(?<=\d) (?=\d)"), ""),
            decoders.Replace(Regex(r"(?<=\w) - (?=\w)"), "-"),
        ]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in _UNSPLIT_WORDS])
    return tokenizer


def _build_tokenizer(
    eos_token: str,
    chat_template: str,
    extra_special_tokens: dict[str, str] | None = None,
    newline_tokens: bool = False,
) -> PreTrainedTokenizerFast:
    kwargs = {"extra_special_tokens": extra_special_tokens} if extra_special_tokens else {}
    backend = _build_backend_tokenizer()
    if newline_tokens:
        # vLLM's Gemma 3 looks up "\n" .. "\n\n\n\n" in the vocabulary (real Gemma tokenizers have them).
        # Appended after every other token, so no other id moves.
        backend.add_tokens([AddedToken("\n" * k, special=False, normalized=False) for k in range(1, 5)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=eos_token,
        bos_token=BOS_TOKEN,
        unk_token=UNK_TOKEN,
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
        # GRPO generation batches prompts of different lengths; decoder-only models need left padding.
        padding_side="left",
        model_max_length=512,
        **kwargs,
    )


def build_tiny_text_model(
    seed: int = 0, vllm_compatible: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Tiny randomly initialised Qwen3 causal LM plus a word-level ChatML tokenizer.

    ``vllm_compatible=True`` gives attention heads of size 32 (2 query heads, 1 key/value head), the
    smallest vLLM's CPU attention accepts (32-512); the default's heads of 16 are cheaper for tests
    that never start vLLM.

    Qwen3 rather than Qwen2: transformers forces ``AutoTokenizer`` to rebuild a byte-level BPE
    ``Qwen2Tokenizer`` for ``model_type == "qwen2"`` checkpoints (it lists qwen2 among models with a wrong hub
    tokenizer class), which would silently destroy the word-level tokenizer on reload. Qwen3 is the same
    decoder family (ChatML, GQA, RoPE) and its saved ``TokenizersBackend`` tokenizer reloads as is.
    """
    tokenizer = _build_tokenizer(eos_token=IM_END, chat_template=TEXT_CHAT_TEMPLATE)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2 if vllm_compatible else 4,
        num_key_value_heads=1 if vllm_compatible else 2,
        head_dim=VLLM_MIN_HEAD_DIM if vllm_compatible else 16,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    _set_generation_ids(model, tokenizer, eos_token_ids=[tokenizer.eos_token_id])
    return model, tokenizer


def build_tiny_vlm(seed: int = 0, vllm_compatible: bool = False) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Tiny randomly initialised MedGemma-architecture VLM (Gemma 3 + SigLIP) plus its processor.

    ``vllm_compatible=True``: text attention heads of size 32 (vLLM's CPU attention needs 32-512), a
    single vision head of size 32, and the newline tokens vLLM's Gemma 3 code looks up.
    """
    tokenizer = _build_tokenizer(
        eos_token=EOS_TOKEN,
        chat_template=VLM_CHAT_TEMPLATE,
        extra_special_tokens={"boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN, "image_token": IMAGE_TOKEN},
        newline_tokens=vllm_compatible,
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=VLM_CHAT_TEMPLATE,
        image_seq_length=_MM_TOKENS_PER_IMAGE,
    )
    head_dim = VLLM_MIN_HEAD_DIM if vllm_compatible else 8
    text_config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        max_position_embeddings=512,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=1 if vllm_compatible else 2,
        image_size=_IMAGE_SIZE,
        patch_size=_PATCH_SIZE,
        # Gemma 3 pools patch embeddings itself; SigLIP's attention-pooling head would be dead weight.
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        # (image_size / patch_size)^2 = 16 patches, average-pooled 2x2 down to 4 soft tokens per image.
        mm_tokens_per_image=_MM_TOKENS_PER_IMAGE,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma3ForConditionalGeneration(config)
        # Gemma 3 zero-initialises the vision->text projection, so a fresh model ignores its images and the
        # vision tower gets no gradient; a random projection makes images affect outputs from step one.
        torch.nn.init.normal_(
            model.model.multi_modal_projector.mm_input_projection_weight, std=config.initializer_range
        )
    # Like MedGemma, a completion ends at either <eos> or the end of the model turn.
    end_of_turn_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    _set_generation_ids(model, tokenizer, eos_token_ids=[tokenizer.eos_token_id, end_of_turn_id])
    return model, processor


def _set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, eos_token_ids: list[int]) -> None:
    # Generation defaults are derived from the config at construction; set them explicitly so that
    # generate() never falls back to ids that do not exist in the tiny vocabulary.
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = eos_token_ids


_BUILDERS = {"text": build_tiny_text_model, "vlm": build_tiny_vlm}


def save_tiny_model(out_dir: str | Path, kind: str = "text", seed: int = 0, vllm_compatible: bool = False) -> Path:
    """Build a tiny model of ``kind`` ("text" or "vlm") and save it with its tokenizer/processor.

    The directory can be reloaded offline with ``AutoModelForCausalLM``/``AutoTokenizer`` (text) or
    ``AutoModelForImageTextToText``/``AutoProcessor`` (vlm), or passed as a model id to TRL trainers.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"Unknown tiny model kind {kind!r}; expected one of {sorted(_BUILDERS)}")
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    model, processing_class = _BUILDERS[kind](seed=seed, vllm_compatible=vllm_compatible)
    model.save_pretrained(out_path)
    processing_class.save_pretrained(out_path)
    # The layout vLLM loads (transformers reads it too), so a saved tiny VLM can be served like a real one.
    to_vllm_checkpoint(out_path, model.config.model_type)
    return out_path
