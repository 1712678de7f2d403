import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
)
from trl import GRPOConfig, GRPOTrainer

from fair_trl.models import build_tiny_text_model, build_tiny_vlm, save_tiny_model

LABEL_WORDS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Fracture",
    "Pneumonia",
    "Pneumothorax",
    "Effusion",
    "No",
    "Finding",
    "Has",
    "COVID",
    "Hemorrhage",
    "Malignant",
    "Benign",
    "MEL",
    "NV",
    "BCC",
    "AKIEC",
    "OTHER",
    "BI-RADS",
    "1",
    "2",
    "3",
    "4",
    "5",
    "Melanoma",
    "Nevus",
]

QUESTION = "Which finding is shown in the image? Answer inside \\boxed{}."


def _image(seed: int) -> PILImage.Image:
    rng = random.Random(seed)
    return PILImage.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))


def _vlm_messages(image: PILImage.Image | None = None) -> list[dict]:
    image_part = {"type": "image", "image": image} if image is not None else {"type": "image"}
    return [{"role": "user", "content": [image_part, {"type": "text", "text": QUESTION}]}]


def _state_dicts_equal(a: PreTrainedModel, b: PreTrainedModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_text"), kind="text", seed=0)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_vlm"), kind="vlm", seed=0)


def test_text_model_reloads_via_auto_classes(text_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(text_dir)
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    built, _ = build_tiny_text_model(seed=0)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert _state_dicts_equal(model, built)
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None
    assert tokenizer.bos_token is not None and tokenizer.unk_token is not None


def test_vlm_reloads_via_auto_classes(vlm_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    processor = AutoProcessor.from_pretrained(vlm_dir)
    built, _ = build_tiny_vlm(seed=0)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert type(processor).__name__ == "Gemma3Processor"
    assert _state_dicts_equal(model, built)
    tok = processor.tokenizer
    assert model.config.image_token_id == tok.image_token_id == tok.convert_tokens_to_ids("<image_soft_token>")
    assert model.config.boi_token_id == tok.boi_token_id == tok.convert_tokens_to_ids("<start_of_image>")
    assert model.config.eoi_token_id == tok.eoi_token_id == tok.convert_tokens_to_ids("<end_of_image>")
    assert model.config.get_text_config().pad_token_id == tok.pad_token_id
    assert tok.eos_token_id in model.generation_config.eos_token_id


@pytest.mark.parametrize("builder", [build_tiny_text_model, build_tiny_vlm])
def test_same_seed_same_weights(builder) -> None:
    a, _ = builder(seed=3)
    b, _ = builder(seed=3)
    c, _ = builder(seed=4)
    assert _state_dicts_equal(a, b)
    assert not _state_dicts_equal(a, c)


def test_unknown_kind_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'nope'.*text.*vlm"):
        save_tiny_model(tmp_path, kind="nope")


def test_tokenizers_round_trip_label_words(text_dir: Path, vlm_dir: Path) -> None:
    for tokenizer in (AutoTokenizer.from_pretrained(text_dir), AutoProcessor.from_pretrained(vlm_dir).tokenizer):
        for word in LABEL_WORDS:
            ids = tokenizer.encode(word, add_special_tokens=False)
            assert tokenizer.unk_token_id not in ids, word
            assert tokenizer.decode(ids) == word
        answer = "<think> Lung opacity is present. </think> \\boxed{Pneumonia}"
        ids = tokenizer.encode(answer, add_special_tokens=False)
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == answer


def test_text_chat_template(text_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    messages = [
        {"role": "system", "content": "You are a radiology assistant."},
        {"role": "user", "content": QUESTION},
    ]
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert with_prompt.endswith("<|im_start|>assistant\n")
    assert not without.endswith("<|im_start|>assistant\n")
    assert QUESTION in with_prompt and "radiology" in with_prompt
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_vlm_chat_template_and_image_tokens(vlm_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(vlm_dir)
    text = processor.apply_chat_template(_vlm_messages(), tokenize=False, add_generation_prompt=True)
    assert text.endswith("<start_of_turn>model\n")
    assert text.count("<start_of_image>") == 1

    inputs = processor.apply_chat_template(
        _vlm_messages(_image(0)),
        tokenize=True,
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    tok = processor.tokenizer
    assert (inputs["input_ids"] == tok.image_token_id).sum().item() == 4
    assert (inputs["input_ids"] == tok.boi_token_id).sum().item() == 1
    assert (inputs["input_ids"] == tok.eoi_token_id).sum().item() == 1
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)


def test_vlm_forward_and_generate(vlm_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    processor = AutoProcessor.from_pretrained(vlm_dir)
    inputs = processor.apply_chat_template(
        _vlm_messages(_image(1)),
        tokenize=True,
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 4

    # A different image must change the logits, otherwise GRPO would train a text-only model.
    inputs["pixel_values"] = torch.randn_like(inputs["pixel_values"])
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, logits)


def _random_reward(completions: list, **kwargs) -> list[float]:
    # Constant rewards give zero advantages and hence zero gradient; distinct values guarantee an update.
    rng = random.Random(len(completions))
    return [rng.random() for _ in completions]


def _grpo_config(output_dir: Path) -> GRPOConfig:
    return GRPOConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        learning_rate=1e-2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
    )


def _run_one_step(trainer: GRPOTrainer) -> set[str]:
    """Run a single GRPO step and return the names of the parameters it changed."""
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 1
    assert any("loss" in entry for entry in trainer.state.log_history)
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed
    return changed


def test_grpo_step_text(text_dir: Path, tmp_path: Path) -> None:
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{QUESTION} Case {i}."}]} for i in range(4)])
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(text_dir),
        processing_class=AutoTokenizer.from_pretrained(text_dir),
        reward_funcs=_random_reward,
        args=_grpo_config(tmp_path),
        train_dataset=dataset,
    )
    _run_one_step(trainer)


def test_grpo_step_vlm(vlm_dir: Path, tmp_path: Path) -> None:
    rows = [{"prompt": _vlm_messages(), "image": _image(i)} for i in range(4)]
    features = Features(
        {
            "prompt": [
                {
                    "role": Value("string"),
                    "content": [{"type": Value("string"), "text": Value("string")}],
                }
            ],
            "image": Image(),
        }
    )
    dataset = Dataset.from_list(rows, features=features)
    trainer = GRPOTrainer(
        model=AutoModelForImageTextToText.from_pretrained(vlm_dir),
        processing_class=AutoProcessor.from_pretrained(vlm_dir),
        reward_funcs=_random_reward,
        args=_grpo_config(tmp_path),
        train_dataset=dataset,
    )
    changed = _run_one_step(trainer)
    # The vision tower only receives gradient if the images actually reached the model.
    assert any("vision_tower" in name for name in changed)
