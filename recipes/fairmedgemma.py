# Copyright 2025 The fair-trl authors. Licensed under the Apache License, Version 2.0.
"""Train FairMedGemma-4B (or any TRL-supported VLM) with FairGRPO, evaluate its fairness, publish it.

The paper's run (Table 3: 4 GPUs, vLLM colocate with tensor parallel 2, W&B):

    accelerate launch --config_file recipes/accelerate/zero3.yaml \\
        recipes/fairmedgemma.py --config recipes/fairmedgemma.yaml \\
        --dataset_name data/clinical_mixture

Any method of the paper: `--config recipes/methods/<method>.yaml` (complete files: MedGemma + Table 3 +
the method). Any field of the YAML can be overridden on the command line (`--learning_rate 1e-6`).
Qwen2.5-VL-7B-Instruct: `--config recipes/qwen2_5_vl_7b.yaml`.

CPU smoke test (offline, tiny model; run by tests/test_recipes.py):

    fair-trl tiny-model /tmp/tiny --kind vlm
    accelerate launch --cpu --num_processes 1 recipes/fairmedgemma.py --config recipes/fairmedgemma.yaml \\
        --model_name_or_path /tmp/tiny --dataset_name synthetic --use_vllm false --max_steps 2 \\
        --report_to none --output_dir /tmp/out --bf16 false --push_to_hub false

(about 3.5 minutes on 2 CPU cores at Table 3's batch; recipes/README.md shows a faster variant).

`--dataset_name` is one of
* `synthetic`: the generated benchmark of `fair_trl.data` (`--synthetic_num_rows` rows, seeded by `--seed`);
* a directory written by `fair-trl build-dataset` (or any `save_to_disk` DatasetDict);
* a Hub dataset name (or a local folder of data files) in the project's schema, read with `load_dataset`.

After training, the model and processor are saved to `--output_dir` and the saved model is audited on the
test split by the code of `fair-trl audit` (greedy answers, `OUT/audit/`: predictions, report, plots), so the
model card's fairness tables are the numbers `fair-trl audit` gives for the pushed model; the card embeds the
per-group F1 plot and the command that reproduces it. `--push_to_hub --hub_model_id ORG/NAME` uploads the
model, processor, card and audit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoProcessor
from transformers.trainer_utils import IntervalStrategy
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from fair_trl import FairGRPOConfig, FairGRPOTrainer, accuracy_reward, build_dataset, format_reward
from fair_trl.audit.training import audit_trained_model
from fair_trl.data.loading import SUMMARY_FILE, is_saved_dataset, load_split

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "google/medgemma-4b-it"
SYNTHETIC = "synthetic"


@dataclass
class FairMedGemmaScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` (dataset_name, dataset_config, dataset_train_split, dataset_test_split) plus:

    Parameters:
        synthetic_num_rows (`int`, defaults to `512`):
            Rows of the generated benchmark when `dataset_name` is `"synthetic"` (train and test together).
        max_eval_samples (`int` or `None`, defaults to `None`):
            Evaluate on a seeded random subset of this many test rows (`None`: the whole test split).
        audit_backend (`str`, defaults to `"hf"`):
            Engine of the final audit: `"hf"` (transformers generate) or `"vllm"` (an offline vLLM engine).
        audit_batch_size (`int`, defaults to `16`):
            Test rows per generation batch in the final audit (per process).
        audit_max_new_tokens (`int` or `None`, defaults to `None`):
            Length cap of the final audit's answers (`None`: `max_completion_length`).
        audit_bootstrap (`int`, defaults to `1000`):
            Bootstrap resamples of the final audit's 95% intervals.
    """

    synthetic_num_rows: int = field(
        default=512,
        metadata={"help": "Rows of the generated benchmark when dataset_name is 'synthetic' (both splits)."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Evaluate on a seeded random subset of this many test rows (default: all of them)."},
    )
    audit_backend: str = field(
        default="hf", metadata={"help": "Engine of the final audit: 'hf' (transformers generate) or 'vllm'."}
    )
    audit_batch_size: int = field(default=16, metadata={"help": "Test rows per generation batch in the final audit."})
    audit_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Length cap of the final audit's answers (default: max_completion_length)."}
    )
    audit_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples of the final audit's intervals."})


def load_splits(script_args: FairMedGemmaScriptArguments, seed: int) -> tuple[Any, Any | None, str]:
    """(train, test or None, a name for the data) from `--dataset_name`."""
    source = script_args.dataset_name
    if not source:
        raise ValueError("--dataset_name is required: 'synthetic', a built dataset directory or a Hub dataset name")
    train_split, test_split = script_args.dataset_train_split, script_args.dataset_test_split
    if source == SYNTHETIC:
        data = build_dataset(SYNTHETIC, None, num_rows=script_args.synthetic_num_rows, seed=seed)
        return data[train_split], data[test_split], "fair-trl synthetic clinical benchmark"
    name = source
    if is_saved_dataset(source):
        summary = Path(source) / SUMMARY_FILE
        if summary.is_file():
            built = json.loads(summary.read_text(encoding="utf-8")).get("dataset")
            name = f"{built} (built with fair-trl build-dataset)" if built else name
    elif script_args.dataset_config:
        raise ValueError("--dataset_config is not supported: build the dataset or pick the config in its Hub name")
    train = load_split(source, train_split)
    if is_saved_dataset(source) and not (Path(source) / "dataset_dict.json").is_file():
        # A single saved Dataset has no splits: load_split would hand back the training rows again.
        logger.warning("%s is a single dataset with no %r split: no evaluation", source, test_split)
        return train, None, name
    try:
        test = load_split(source, test_split)
    except (ValueError, FileNotFoundError) as err:
        logger.warning("no evaluation split %r in %s (%s): the model card will have no fairness tables", test_split,
                       source, err)  # fmt: skip
        test = None
    return train, test, name


def final_audit(
    trainer: FairGRPOTrainer,
    eval_dataset: Any,
    script_args: FairMedGemmaScriptArguments,
    training_args: FairGRPOConfig,
) -> dict[str, Any] | None:
    """The final evaluation: `fair-trl audit`'s code on the saved model; the card reports it."""
    source = script_args.dataset_name
    options = {"num_rows": script_args.synthetic_num_rows, "seed": training_args.seed} if source == SYNTHETIC else {}
    subset = None
    if script_args.max_eval_samples is not None:
        subset = (
            f"a random subset of {len(eval_dataset)} test rows, `Dataset.shuffle(seed={training_args.seed})"
            f".select(range({len(eval_dataset)}))`"
        )
    return audit_trained_model(
        trainer,
        eval_dataset,
        training_args.output_dir,
        source=source,
        split=script_args.dataset_test_split,
        dataset_options=options,
        backend=script_args.audit_backend,
        batch_size=script_args.audit_batch_size,
        max_new_tokens=script_args.audit_max_new_tokens or training_args.max_completion_length,
        bootstrap=script_args.audit_bootstrap,
        hub_model_id=training_args.hub_model_id if training_args.push_to_hub else None,
        subset_note=subset,
    )


def main(script_args: FairMedGemmaScriptArguments, training_args: FairGRPOConfig, model_args: ModelConfig) -> None:
    model_id = model_args.model_name_or_path or DEFAULT_MODEL

    # Model: loaded by the trainer from its id with these kwargs, as in TRL's own scripts, so that
    # DeepSpeed ZeRO-3 / FSDP, vLLM weight syncing and PEFT wrapping all see a model they created.
    model_init_kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:  # QLoRA: --load_in_4bit with --use_peft
        model_init_kwargs["quantization_config"] = quantization_config
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    processor = AutoProcessor.from_pretrained(
        model_id,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        padding_side="left",
    )

    if model_args.use_peft and not model_args.lora_target_modules and not model_args.lora_target_parameters:
        # PEFT has no default LoRA targets for Gemma 3 (MedGemma): it would refuse to start. Every linear
        # layer is what Google's MedGemma fine-tuning notebook adapts.
        model_args.lora_target_modules = "all-linear"

    train_dataset, eval_dataset, data_name = load_splits(script_args, training_args.seed)
    if eval_dataset is not None and script_args.max_eval_samples is not None:
        count = min(script_args.max_eval_samples, len(eval_dataset))
        eval_dataset = eval_dataset.shuffle(seed=training_args.seed).select(range(count))
    if eval_dataset is None:  # nothing to evaluate on: train without the evaluation schedule
        training_args.eval_strategy = IntervalStrategy.NO

    trainer = FairGRPOTrainer(
        model=model_id,
        reward_funcs=[accuracy_reward, format_reward],
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    trainer.save_model(training_args.output_dir)  # model and processor
    # The fairness of what is saved (and pushed), by the audit's code: greedy answers to the test split.
    if eval_dataset is not None:
        final_audit(trainer, eval_dataset, script_args, training_args)
    if trainer.is_world_process_zero():
        card = trainer.write_model_card(dataset_names=data_name)
        trainer.accelerator.print(f"Model, processor and model card saved to {card.parent}")
    if training_args.push_to_hub:
        # Uploads the output directory: model, processor and the card (re-written by create_model_card).
        trainer.push_to_hub(dataset_name=data_name)
        trainer.accelerator.print(f"Pushed to https://huggingface.co/{trainer.hub_model_id}")
    # Trainer.end() only exists from transformers 5.18; it is exactly this call.
    trainer.accelerator.end_training()


def make_parser() -> TrlParser:
    return TrlParser((FairMedGemmaScriptArguments, FairGRPOConfig, ModelConfig))


if __name__ == "__main__":
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    main(script_args, training_args, model_args)
