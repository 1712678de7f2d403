"""Model cards that carry the fairness report: what was trained, how, on what, and how fair it is.

`render_model_card(record)` is a pure function of a plain `ModelCardRecord` (the base model, the method,
the data, the hyperparameters and the fairness results, {attribute: `compute_fairness` output}): it
returns the README.md text, with YAML front matter the Hub reads (``base_model``, ``tags``,
``datasets`` and a ``model-index`` with the F1, accuracy, EOD, PP, ... of every demographic attribute).
The tables are those of ``fair-trl evaluate``: the Table 2-style summary and the appendix-style table
per dataset and group. `FairGRPOTrainer.model_card_record()` builds the record of a run
(`fair_trl.card_record`); nothing here reads a trainer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from fair_trl.advantages import REGISTRY
from fair_trl.evaluate import markdown_tables

__all__ = [
    "ModelCardRecord",
    "adapter_settings",
    "card_hyperparameters",
    "method_name",
    "render_model_card",
    "write_model_card",
]

# (model-index metric type, compute_fairness key, display name); higher is better for the first four.
INDEX_METRICS = (
    ("f1", "f1", "F1"),
    ("accuracy", "acc", "Accuracy"),
    ("f1_es", "f1_es", "F1_ES"),
    ("acc_es", "acc_es", "Acc_ES"),
    ("eod", "EOD", "EOD"),
    ("pp", "PP", "PP"),
    ("fpr_diff", "FPR_diff", "FPR_diff"),
    ("delta_f1", "delta_f1", "delta_F1"),
    ("sigma_f1", "sigma_f1", "sigma_F1"),
    ("delta_acc", "delta_acc", "delta_Acc"),
    ("sigma_acc", "sigma_acc", "sigma_Acc"),
)

# FairGRPOConfig fields shown in every card (those a reader needs to reproduce the run), in this order;
# each estimator's own fields (its registry entry) follow them, for that estimator only.
CARD_FIELDS = (
    "advantage_estimator",
    "balanced_sampling",
    "sampling_weight_column",
    "guided_sampling",
    "learning_rate",
    "lr_scheduler_type",
    "weight_decay",
    "num_train_epochs",
    "max_steps",
    "num_generations",
    "max_completion_length",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "steps_per_generation",
    "generation_batch_size",
    "num_iterations",
    "beta",
    "epsilon",
    "loss_type",
    "temperature",
    "use_vllm",
    "vllm_mode",
    "vllm_tensor_parallel_size",
    "vllm_gpu_memory_utilization",
    "bf16",
    "seed",
    "domain_column",
    "demographic_columns",
    "age_bins",
)
RESAMPLING = ("GRPO + Resampling", "GRPO on prompts resampled so every (domain, demographic group) is equally frequent")
# Sampler names (`ModelCardRecord.sampler`).
BALANCED_SAMPLER = "balanced"
WEIGHTED_SAMPLER_PREFIX = "weighted:"
GUIDED_SAMPLER = "fair_grpo_guided"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

CITATION = """```bibtex
@misc{dai_fairgrpo,
  title  = {FairGRPO: Fair Reinforcement Learning for Equitable Clinical Reasoning},
  author = {Dai, Shiqi and Dai, Wei and Cheong, Jiaee and Liang, Paul Pu},
}
```"""


def method_name(
    estimator: str, sampler: str | None = None, variants: Mapping[str, Any] | None = None
) -> tuple[str, str]:
    """(display name, description) of a training method: the estimator's registry entry, plus its sampler
    (GRPO with balanced sampling is the paper's Resampling) and any variant fields set away from the paper.
    """
    spec = REGISTRY.get(estimator)
    display, description = (spec.display_name, spec.description) if spec else (estimator, f"estimator {estimator!r}")
    if sampler == BALANCED_SAMPLER:
        if estimator == "grpo":
            return RESAMPLING
        display += " + Resampling"
        description += "; prompts resampled so every (domain, demographic group) is equally frequent"
    elif sampler and sampler.startswith(WEIGHTED_SAMPLER_PREFIX):
        column = sampler[len(WEIGHTED_SAMPLER_PREFIX) :]
        display += " + weighted sampling"
        description += f"; prompts drawn in proportion to the `{column}` column"
    elif sampler == GUIDED_SAMPLER:
        display += " + FairGRPO-guided sampling"
        description += "; prompts drawn in proportion to FairGRPO's weight of their (domain, demographic group)"
    if variants:
        settings = ", ".join(f"{name}={_fmt_value(value)}" for name, value in variants.items())
        display += f" (variant: {settings})"
        description += f"; a variant of the paper's method ({settings})"
    return display, description


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and bool(_HUB_ID.match(str(name)))


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt_value(v) for v in value) if value else "(none)"
    return str(getattr(value, "value", value))  # enums (lr_scheduler_type) show their value


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "dataset"


def _as_list(names: str | Iterable[str] | None) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    return [str(n) for n in names]


def adapter_settings(model: Any) -> dict[str, Any] | None:
    """The PEFT adapter a model trains (its type, rank, alpha, dropout, target modules), None for a full model.

    Reads the `peft_config` mapping a `peft.PeftModel` carries (its first adapter, the one TRL trains).
    """
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, Mapping) or not configs:
        return None
    config = next(iter(configs.values()))
    settings = {"type": str(getattr(config.peft_type, "value", config.peft_type))}
    for name in ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save"):
        value = getattr(config, name, None)
        if value is not None:
            settings[name] = sorted(value) if isinstance(value, set | frozenset) else value
    return settings


def _adapter_name(adapter: Mapping[str, Any]) -> str:
    kind = str(adapter.get("type", "adapter"))
    return "LoRA" if kind.upper() == "LORA" else kind


def _metadata(
    model_name: str,
    base_model: str,
    base_model_on_hub: bool,
    datasets: list[str],
    hub_datasets: list[str],
    tags: list[str],
    fairness: Mapping[str, Mapping[str, Any]],
    eval_dataset: str | None,
    eval_split: str | None,
    adapter: bool = False,
) -> str:
    eval_results = []
    if fairness:
        name = eval_dataset or (datasets[0] if datasets else "evaluation data")
        for attribute, result in fairness.items():
            for metric_type, key, display in INDEX_METRICS:
                eval_results.append(
                    EvalResult(
                        task_type="image-text-to-text",
                        task_name="Clinical diagnosis",
                        dataset_type=name if name in hub_datasets else _slug(name),
                        dataset_name=name,
                        dataset_split=eval_split,
                        metric_type=metric_type,
                        metric_value=round(float(result[key]), 4),
                        metric_name=f"{display} ({attribute} groups)",
                        metric_config=attribute,
                    )
                )
    data = ModelCardData(
        base_model=base_model if base_model_on_hub else None,
        datasets=hub_datasets or None,
        # An adapter is loaded by PEFT onto `base_model`; the Hub shows it as an adapter of that model.
        library_name="peft" if adapter else "transformers",
        pipeline_tag="image-text-to-text",
        tags=tags,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    return data.to_yaml()


@dataclass
class ModelCardRecord:
    """Everything a model card says, as plain values (no trainer, no model).

    `method`: the `advantage_estimator`; `sampler`: None, ``"balanced"`` or ``"weighted:<column>"``;
    `variants`: the estimator's variant fields set away from the paper. `fairness`: {attribute:
    `compute_fairness` output} of the final evaluation, or {} when there was none. `base_model_on_hub`:
    whether `base_model` names a Hub model (it then goes into the metadata); None: whether it looks like
    ``org/name``. `hub_datasets`: which of `datasets` are Hub datasets (listed in the metadata); None:
    those that look like ``org/name``. `domains`: training rows per domain. `figures`: (caption, path
    relative to the card) of plots shown under the fairness tables; `evaluation_note`: how the evaluation
    was produced and how to reproduce it (e.g. the ``fair-trl audit`` command). `adapter`: the PEFT adapter's
    settings (`adapter_settings`) when the run trained one: the repository then holds the adapter, not weights.
    """

    base_model: str
    method: str
    datasets: str | Sequence[str] | None
    hyperparameters: Mapping[str, Any]
    fairness: Mapping[str, Mapping[str, Any]] | None
    sampler: str | None = None
    variants: Mapping[str, Any] = field(default_factory=dict)
    model_name: str | None = None
    hub_model_id: str | None = None
    tags: Sequence[str] | None = None
    base_model_on_hub: bool | None = None
    hub_datasets: Sequence[str] | None = None
    domains: Mapping[str, int] | None = None
    eval_dataset: str | None = None
    eval_split: str | None = "test"
    trained_steps: int | None = None
    versions: Mapping[str, str] | None = None
    figures: Sequence[tuple[str, str]] = ()
    evaluation_note: str | None = None
    adapter: Mapping[str, Any] | None = None

    @classmethod
    def build(
        cls,
        *,
        base_model: str,
        method: str,
        sampler: str | None,
        variants: Mapping[str, Any],
        dataset_names: str | Sequence[str] | None,
        domains: Mapping[str, int] | None,
        hyperparameters: Mapping[str, Any],
        fairness: Mapping[str, Mapping[str, Any]],
        model_name: str | None,
        output_dir: str,
        hub_model_id: str | None,
        tags: str | Sequence[str] | None,
        eval_split: str | None,
        trained_steps: int | None,
        figures: Sequence[tuple[str, str]] = (),
        evaluation_note: str | None = None,
        adapter: Mapping[str, Any] | None = None,
    ) -> ModelCardRecord:
        """A run's record, telling local paths from Hub ids: a name that exists on disk is local."""
        on_hub = _is_hub_id(base_model) and not Path(base_model).expanduser().exists()
        names = _as_list(dataset_names) or sorted(domains or ())
        if hub_model_id and not _is_hub_id(hub_model_id):
            hub_model_id = None
        return cls(
            base_model=base_model,
            method=method,
            sampler=sampler,
            variants=dict(variants),
            datasets=names,
            hyperparameters=dict(hyperparameters),
            fairness=dict(fairness),
            model_name=model_name or (hub_model_id.split("/")[-1] if hub_model_id else Path(output_dir).name),
            hub_model_id=hub_model_id,
            tags=_as_list(tags),
            base_model_on_hub=on_hub,
            hub_datasets=[n for n in names if _is_hub_id(n) and not Path(n).expanduser().exists()],
            domains=domains,
            eval_dataset=names[0] if len(names) == 1 else None,
            eval_split=eval_split if fairness else None,
            trained_steps=trained_steps,
            versions=_versions(),
            figures=list(figures) if fairness else [],
            evaluation_note=evaluation_note if fairness else None,
            adapter=dict(adapter) if adapter else None,
        )


def render_model_card(record: ModelCardRecord) -> str:
    """The README.md text of a model trained with fair-trl."""
    r = record
    base_model, method, hyperparameters = r.base_model, r.method, r.hyperparameters
    hub_model_id, eval_dataset, eval_split = r.hub_model_id, r.eval_dataset, r.eval_split
    domains, trained_steps, versions = r.domains, r.trained_steps, r.versions
    fairness = dict(r.fairness or {})
    dataset_list = _as_list(r.datasets)
    display, description = method_name(method, r.sampler, r.variants)
    model_name = r.model_name or (hub_model_id.split("/")[-1] if hub_model_id else f"{display} model")
    on_hub = _is_hub_id(base_model) if r.base_model_on_hub is None else r.base_model_on_hub
    hub_datasets = r.hub_datasets
    if hub_datasets is None:
        hub_datasets = [d for d in dataset_list if _is_hub_id(d)]
    method_tag = _slug(display.split(" (variant:")[0])
    all_tags = ["fair-trl", "trl", "grpo", method_tag, "medical", "clinical", "fairness", "vision-language"]
    if r.adapter:
        all_tags += ["peft", _slug(_adapter_name(r.adapter))]
    for tag in r.tags or ():
        if tag not in all_tags:
            all_tags.append(tag)

    front = _metadata(
        model_name,
        base_model,
        on_hub,
        dataset_list,
        list(hub_datasets),
        all_tags,
        fairness,
        eval_dataset,
        eval_split,
        adapter=bool(r.adapter),
    )
    base_link = f"[{base_model}](https://huggingface.co/{base_model})" if on_hub else f"`{base_model}`"
    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        "",
        f"# {model_name}",
        "",
        f"{model_name} is {base_link} fine-tuned with **{display}** by reinforcement learning on clinical "
        "classification questions, using fair-trl on TRL's `GRPOTrainer`. It answers with its reasoning in "
        "`<think> </think>` and the diagnosis in `\\boxed{}`.",
        "",
        "It is a research artefact: it is not a medical device and must not be used for clinical decisions.",
        "",
        "## Training",
        "",
        f"- **Base model:** {base_link}",
        f"- **Method:** {display} (`advantage_estimator: {method}`): {description}",
        f"- **Data:** {', '.join(dataset_list) if dataset_list else 'not recorded'}",
    ]
    if r.adapter:
        settings = ", ".join(f"{k} {_fmt_value(v)}" for k, v in r.adapter.items() if k != "type")
        lines.append(f"- **Adapter:** {_adapter_name(r.adapter)} ({settings}); this repository holds the adapter only")
    if hub_model_id:
        lines.append(f"- **Repository:** [{hub_model_id}](https://huggingface.co/{hub_model_id})")
    if domains:
        counts = ", ".join(f"{name} ({count})" for name, count in sorted(domains.items(), key=lambda kv: -kv[1]))
        lines.append(f"- **Training rows per domain:** {counts}")
    if trained_steps is not None:
        lines.append(f"- **Optimizer steps trained:** {trained_steps}")
    if versions:
        lines.append("- **Software:** " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines += ["", "### Hyperparameters", "", "| hyperparameter | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt_value(value)} |" for key, value in hyperparameters.items()]
    lines += ["", "## Fairness evaluation", ""]
    if fairness:
        first = next(iter(fairness.values()))
        where = f"{eval_dataset or 'the evaluation data'}" + (f" ({eval_split} split)" if eval_split else "")
        lines += [
            f"Scored on {first['n']} answers to {where}, one demographic attribute at a time, with the metrics "
            "of the FairGRPO paper (Appendix B.1): every class one-vs-rest within its dataset, a group's value on "
            "a dataset is the mean over its classes; F1 and Acc are averaged over each dataset's groups and then "
            "over datasets; EOD, PP and FPR_diff are the max - min across groups of TPR, FDR and FPR; sigma is the "
            "sample standard deviation and delta the max - min of a group metric across groups; "
            "X_ES = X / (1 + sigma_X). Lower is fairer for EOD, PP, FPR_diff, sigma and delta.",
            "",
        ]
        if r.evaluation_note:
            lines += [r.evaluation_note, ""]
        lines += markdown_tables(fairness)
        for attribute, result in fairness.items():
            if result.get("n_unknown_group"):
                count = result["n_unknown_group"]
                lines.append(f"{count} answers with unknown {attribute} are left out of its groups.")
        lines.append("")
        for caption, path in r.figures:
            lines += [f"![{caption}]({path})", ""]
    else:
        lines += ["No evaluation has been run yet: `trainer.evaluate()` on a test split fills this section.", ""]
    lines += ["## Use", "", *_use_snippet(hub_model_id or model_name, base_model, bool(r.adapter)), ""]
    lines += [
        "Prompt it as in training: the image, the question with its candidate labels, and the instruction to think "
        "in `<think> </think>` and put the final answer in `\\boxed{}`.",
        "",
        "## Citation",
        "",
        CITATION,
        "",
    ]
    return "\n".join(lines)


def _use_snippet(repository: str, base_model: str, adapter: bool) -> list[str]:
    if not adapter:
        return [
            "```python",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            f'model = AutoModelForImageTextToText.from_pretrained("{repository}")',
            f'processor = AutoProcessor.from_pretrained("{repository}")',
            "```",
        ]
    return [
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'base = AutoModelForImageTextToText.from_pretrained("{base_model}")',
        f'model = PeftModel.from_pretrained(base, "{repository}")  # .merge_and_unload() for plain weights',
        f'processor = AutoProcessor.from_pretrained("{repository}")',
        "```",
    ]


def card_hyperparameters(args: Any) -> dict[str, Any]:
    """The card's hyperparameter table from a `FairGRPOConfig`, with the batch sizes in prompts as well.

    The common fields, then the fields of the run's estimator (its registry entry), variants included.
    """
    spec = REGISTRY.get(getattr(args, "advantage_estimator", "grpo"))
    out: dict[str, Any] = {}
    for name in (*CARD_FIELDS, *(spec.config_fields(args) if spec else ())):
        if not hasattr(args, name):
            continue
        if name == "max_steps" and args.max_steps <= 0:
            continue
        if name in ("balanced_sampling", "sampling_weight_column", "guided_sampling") and not getattr(args, name):
            continue
        if name.startswith("vllm_") and not getattr(args, "use_vllm", False):
            continue
        out[name] = getattr(args, name)
    world = getattr(args, "world_size", 1)
    generations = args.num_generations
    out["processes (GPUs)"] = world
    if getattr(args, "generation_batch_size", None):
        out["prompts per rollout batch"] = args.generation_batch_size // generations
    out["prompts per optimizer step"] = (
        args.per_device_train_batch_size * world * args.gradient_accumulation_steps // generations
    )
    return out


def _versions() -> dict[str, str]:
    import torch
    import transformers
    import trl

    import fair_trl

    return {"fair-trl": fair_trl.__version__, "TRL": trl.__version__, "Transformers": transformers.__version__,
            "PyTorch": torch.__version__}  # fmt: skip


def write_model_card(record: ModelCardRecord, output_dir: str | Path) -> Path:
    """Write ``<output_dir>/README.md`` from `record` (atomically: a reader never sees half a card)."""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_model_card(record), encoding="utf-8")
    tmp.replace(path)
    return path
