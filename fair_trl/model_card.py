"""Model cards that carry the fairness report: what was trained, how, on what, and how fair it is.

`render_model_card(...)` is pure: from the base model, the method, the data, the hyperparameters and the
fairness results ({attribute: `compute_fairness` output}) it returns the README.md text, with YAML front
matter the Hub reads (``base_model``, ``tags``, ``datasets`` and a ``model-index`` with the F1, accuracy,
EOD, PP, ... of every demographic attribute). The tables are those of ``fair-trl evaluate``: the Table
2-style summary and the appendix-style table per dataset and group.

`write_model_card(trainer, ...)` takes all of that from a `FairGRPOTrainer` (its `args`, `model`, datasets
and `fairness_results["eval"]`, which `trainer.evaluate()` fills) and writes ``<output_dir>/README.md``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCardData

from fair_trl.evaluate import markdown_tables

if TYPE_CHECKING:
    from fair_trl.trainer import FairGRPOTrainer

__all__ = ["METHODS", "card_hyperparameters", "method_name", "render_model_card", "write_model_card"]

# advantage_estimator -> (display name, one-line description)
METHODS: dict[str, tuple[str, str]] = {
    "grpo": ("GRPO", "group relative policy optimisation: each rollout's reward normalised within its prompt's group"),
    "rloo": ("RLOO", "REINFORCE leave-one-out: each rollout's baseline is the mean reward of the prompt's others"),
    "reinforce_pp": ("REINFORCE++", "REINFORCE with advantages normalised over the whole batch"),
    "group_dro": (
        "GRPO + Group DRO",
        "GRPO with online Group DRO weights that up-weight the demographic groups with the lowest reward",
    ),
    "fair_grpo": (
        "FairGRPO",
        "fairness-aware GRPO: each prompt's normalised advantage is divided by temperatures of its domain and "
        "demographic group (sqrt(count) x mean reward), so under-represented and harder groups weigh more; "
        "prompts without demographics get latent groups by clustering",
    ),
    "fair_grpo_nd": (
        "FairGRPO-ND",
        "FairGRPO without demographics: every prompt's group is discovered by k-means on its rollout rewards",
    ),
}
RESAMPLING = ("GRPO + Resampling", "GRPO on prompts resampled so every (domain, demographic group) is equally frequent")

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

# FairGRPOConfig fields shown in the card (those a reader needs to reproduce the run), in this order.
CARD_FIELDS = (
    "advantage_estimator",
    "balanced_sampling",
    "dro_step_size",
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
    "cluster_max_k",
    "cluster_elbow_threshold",
    "cluster_pool_size",
)
# Fields that only matter for some estimators.
_ONLY_FOR = {
    "dro_step_size": ("group_dro",),
    "cluster_max_k": ("fair_grpo", "fair_grpo_nd"),
    "cluster_elbow_threshold": ("fair_grpo", "fair_grpo_nd"),
    "cluster_pool_size": ("fair_grpo", "fair_grpo_nd"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

CITATION = """```bibtex
@misc{dai_fairgrpo,
  title  = {FairGRPO: Fair Reinforcement Learning for Equitable Clinical Reasoning},
  author = {Dai, Shiqi and Dai, Wei and Cheong, Jiaee and Liang, Paul Pu},
}
```"""


def method_name(estimator: str, balanced_sampling: bool = False) -> tuple[str, str]:
    """(display name, description) of a training method; GRPO with balanced sampling is Resampling."""
    if estimator == "grpo" and balanced_sampling:
        return RESAMPLING
    return METHODS.get(estimator, (estimator, f"advantage estimator {estimator!r}"))


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
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=tags,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    return data.to_yaml()


def render_model_card(
    *,
    base_model: str,
    method: str,
    datasets: str | Sequence[str] | None,
    hyperparameters: Mapping[str, Any],
    fairness: Mapping[str, Mapping[str, Any]] | None,
    model_name: str | None = None,
    hub_model_id: str | None = None,
    tags: Sequence[str] | None = None,
    base_model_on_hub: bool | None = None,
    hub_datasets: Sequence[str] | None = None,
    domains: Mapping[str, int] | None = None,
    eval_dataset: str | None = None,
    eval_split: str | None = "test",
    trained_steps: int | None = None,
    versions: Mapping[str, str] | None = None,
) -> str:
    """The README.md text of a model trained with fair-trl.

    `method`: the `advantage_estimator` (GRPO with ``balanced_sampling`` in `hyperparameters` is shown as
    Resampling). `fairness`: {attribute: `compute_fairness` output} of the final evaluation, or None/{}
    when there was none. `base_model_on_hub`: whether `base_model` names a Hub model (it then goes into the
    metadata); by default, whether it looks like ``org/name``. `hub_datasets`: which of `datasets` are Hub
    datasets (listed in the metadata); by default those that look like ``org/name``. `domains`: training
    rows per domain.
    """
    fairness = dict(fairness or {})
    dataset_list = _as_list(datasets)
    display, description = method_name(method, bool(hyperparameters.get("balanced_sampling")))
    model_name = model_name or (hub_model_id.split("/")[-1] if hub_model_id else f"{display} model")
    on_hub = _is_hub_id(base_model) if base_model_on_hub is None else base_model_on_hub
    if hub_datasets is None:
        hub_datasets = [d for d in dataset_list if _is_hub_id(d)]
    all_tags = ["fair-trl", "trl", "grpo", _slug(display), "medical", "clinical", "fairness", "vision-language"]
    for tag in tags or ():
        if tag not in all_tags:
            all_tags.append(tag)

    front = _metadata(
        model_name, base_model, on_hub, dataset_list, list(hub_datasets), all_tags, fairness, eval_dataset, eval_split
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
        lines += markdown_tables(fairness)
        for attribute, result in fairness.items():
            if result.get("n_unknown_group"):
                count = result["n_unknown_group"]
                lines.append(f"{count} answers with unknown {attribute} are left out of its groups.")
        lines.append("")
    else:
        lines += ["No evaluation has been run yet: `trainer.evaluate()` on a test split fills this section.", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{hub_model_id or model_name}")',
        f'processor = AutoProcessor.from_pretrained("{hub_model_id or model_name}")',
        "```",
        "",
        "Prompt it as in training: the image, the question with its candidate labels, and the instruction to think "
        "in `<think> </think>` and put the final answer in `\\boxed{}`.",
        "",
        "## Citation",
        "",
        CITATION,
        "",
    ]
    return "\n".join(lines)


def card_hyperparameters(args: Any) -> dict[str, Any]:
    """The card's hyperparameter table from a `FairGRPOConfig`, with the batch sizes in prompts as well."""
    estimator = getattr(args, "advantage_estimator", "grpo")
    out: dict[str, Any] = {}
    for name in CARD_FIELDS:
        if not hasattr(args, name):
            continue
        if name in _ONLY_FOR and estimator not in _ONLY_FOR[name]:
            continue
        if name == "max_steps" and args.max_steps <= 0:
            continue
        if name == "balanced_sampling" and not args.balanced_sampling:
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


def _base_model_id(model: Any) -> str:
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, Mapping) and peft_config:
        name = next(iter(peft_config.values())).base_model_name_or_path
        if name:
            return str(name)
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or "unknown")


def _versions() -> dict[str, str]:
    import torch
    import transformers
    import trl

    import fair_trl

    return {"fair-trl": fair_trl.__version__, "TRL": trl.__version__, "Transformers": transformers.__version__,
            "PyTorch": torch.__version__}  # fmt: skip


def write_model_card(
    trainer: FairGRPOTrainer,
    dataset_names: str | Sequence[str] | None = None,
    *,
    model_name: str | None = None,
    tags: str | Sequence[str] | None = None,
    eval_split: str | None = "test",
) -> Path:
    """Write ``<trainer.args.output_dir>/README.md`` for `trainer`'s model and return its path.

    Reads `trainer.args` (the method and hyperparameters), `trainer.model` (the base model id), the train
    dataset's domain column (rows per domain), `trainer.fairness_results["eval"]` (the last evaluation's
    fairness results) and `trainer.hub_model_id`. `dataset_names`: what the model was trained on (a Hub id
    goes into the card's metadata); by default the train dataset's domains.
    """
    args = trainer.args
    base_model = _base_model_id(trainer.model)
    on_hub = _is_hub_id(base_model) and not Path(base_model).expanduser().exists()
    domains = None
    column = getattr(args, "domain_column", None)
    train = getattr(trainer, "train_dataset", None)
    if column and train is not None and column in (getattr(train, "column_names", None) or ()):
        domains = dict(Counter(str(v) for v in train[column]))
    names = _as_list(dataset_names) or sorted(domains or ())
    # The repository's full id once `push_to_hub` created it; before that, args.hub_model_id if it names one.
    hub_model_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id
    if hub_model_id and not _is_hub_id(hub_model_id):
        hub_model_id = None
    fairness = getattr(trainer, "fairness_results", {}).get("eval") or {}
    text = render_model_card(
        base_model=base_model,
        method=getattr(args, "advantage_estimator", "grpo"),
        datasets=names,
        hyperparameters=card_hyperparameters(args),
        fairness=fairness,
        model_name=model_name or (hub_model_id.split("/")[-1] if hub_model_id else Path(args.output_dir).name),
        hub_model_id=hub_model_id,
        tags=_as_list(tags),
        base_model_on_hub=on_hub,
        hub_datasets=[n for n in names if _is_hub_id(n) and not Path(n).expanduser().exists()],
        domains=domains,
        eval_dataset=names[0] if len(names) == 1 else None,
        eval_split=eval_split if fairness else None,
        trained_steps=trainer.state.global_step,
        versions=_versions(),
    )
    path = Path(args.output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
