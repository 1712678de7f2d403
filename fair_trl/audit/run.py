"""`run_audit`: answer every row of a split with a model, resumably, then write the fairness report.

``OUT/audit.json`` records what was asked (model, data, split, generation settings); a rerun into the same
folder must ask the same, or the answers in ``OUT/predictions.jsonl`` would mix two audits. Rows already
answered there are skipped. Rows whose image does not decode are counted and listed in the report, never
answered, and tried again by a rerun (the file may have been fixed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fair_trl.audit.backends import (
    GenerationBackend,
    GenerationSettings,
    PromptInput,
    is_multimodal,
    load_backend,
    render_prompts,
)
from fair_trl.audit.fingerprint import audit_fingerprint
from fair_trl.audit.inputs import SOLUTION_COLUMN, AuditRows, load_rows
from fair_trl.audit.store import PREDICTIONS_FILE, PredictionStore
from fair_trl.groups import column_names
from fair_trl.labels import read_label_sets

__all__ = [
    "MANIFEST_FILE",
    "AuditProgress",
    "AuditSettings",
    "answer_rows",
    "audit",
    "merge_shards",
    "record_manifest",
    "run_audit",
    "shard_file",
    "write_audit_report",
]

MANIFEST_FILE = "audit.json"
# Settings that change the answers: a resumed audit must match them all.
_ANSWER_SETTINGS = (
    "model",
    "dataset",
    "split",
    "dataset_options",
    "backend",
    "max_new_tokens",
    "temperature",
    "seed",
    "attributes",
    "id_column",
    "chat_template",
    "dtype",
    "fingerprint",  # what the options name, by content (fair_trl.audit.fingerprint)
)


@dataclass
class AuditSettings:
    """What `fair-trl audit` was asked; its options, one for one."""

    model: str
    dataset: str
    output_dir: str
    split: str = "test"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    backend: str = "hf"
    max_new_tokens: int = 256
    batch_size: int = 8
    limit: int | None = None
    temperature: float = 0.0
    seed: int = 0
    attributes: tuple[str, ...] = ("age", "sex")
    id_column: str | None = None
    chat_template: str | None = None
    bootstrap: int = 1000
    age_bins: tuple[float, ...] | None = None
    max_age: float | None = None
    device: str | None = None
    dtype: str = "auto"
    plots: bool = True
    overwrite: bool = False
    progress: bool = True
    label_sets: dict[str, list[str]] | None = None  # scoring only: a rerun may declare them without answering again

    def __post_init__(self) -> None:
        self.attributes = tuple(self.attributes)
        column_names(self.attributes)  # an unknown kind fails before anything is answered
        self.label_sets = read_label_sets(self.label_sets)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for every row), got {self.limit}")

    def generation(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.temperature, self.seed)

    def manifest(self) -> dict[str, Any]:
        values = asdict(self)
        values["attributes"] = list(self.attributes)
        return {key: values[key] for key in _ANSWER_SETTINGS if key in values}


@dataclass
class AuditProgress:
    """What one run of the answering loop did; `image_errors` and `no_reference` are (row id, reason)."""

    rows: int = 0  # rows selected (after --limit and sharding)
    resumed: int = 0  # already in the predictions file
    answered: int = 0  # answered by this run
    image_errors: list[tuple[str, str]] = field(default_factory=list)
    no_reference: list[str] = field(default_factory=list)
    dropped_partial_line: bool = False


def _outputs(out: Path) -> list[Path]:
    """What an audit writes into `out` besides its manifest: its answers, then its report."""
    from fair_trl.audit.report import FAIRNESS_FILE, PLOT_FILES, REPORT_FILE

    answers = [out / PREDICTIONS_FILE, *sorted(out.glob("predictions.rank*-of-*.jsonl"))]
    return answers + [out / name for name in (FAIRNESS_FILE, REPORT_FILE, *PLOT_FILES.values())]


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def _shown(value: Any) -> str:
    # A SHA-256 is told apart by its first characters; 64 of them would drown the message.
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "..."
    return repr(value)


def manifest_differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """'setting: old then, new now' for each answer setting (and fingerprint part) that differs."""
    old = {k: v for key in _ANSWER_SETTINGS for k, v in _flatten(before.get(key), key).items()}
    new = {k: v for key in _ANSWER_SETTINGS for k, v in _flatten(now.get(key), key).items()}
    return [f"{k}: {_shown(old.get(k))} then, {_shown(new.get(k))} now" for k in dict.fromkeys([*old, *new])
            if old.get(k) != new.get(k)]  # fmt: skip


def check_output_dir(out: Path, inputs: Mapping[str, str | None]) -> None:
    """Refuse an output folder that is one of the inputs (`inputs`: option -> path)."""
    for option, value in inputs.items():
        if value and Path(value).exists() and out.resolve() == Path(value).resolve():
            raise ValueError(
                f"-o {out} is also {option}: the audit would write into its own input; choose another folder"
            )


def _check_manifest(out: Path, manifest: Mapping[str, Any], overwrite: bool) -> None:
    """Refuse to mix two audits in `out`; with `overwrite`, clear the earlier one. Then record `manifest`.

    Runs only once the new audit's model and data have loaded, so a mistyped option loses nothing.
    """
    path = out / MANIFEST_FILE
    existing = [p for p in _outputs(out) if p.is_file() and (p.name != PREDICTIONS_FILE or p.stat().st_size)]
    if overwrite:
        for stale in existing:
            stale.unlink()
    elif existing and path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = manifest_differences(before, manifest)
        if changed:
            raise ValueError(
                f"{out} holds the answers or report of another audit ({'; '.join(changed)}). Resuming would mix the "
                "two: pass --overwrite to start again, or another -o folder"
            )
    elif existing:
        raise ValueError(
            f"{existing[0]} exists without {MANIFEST_FILE}: it belongs to another run. Pass --overwrite to replace "
            "it, or another -o folder"
        )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(manifest), indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def _selected(rows: AuditRows, limit: int | None, shard: tuple[int, int]) -> list[int]:
    rank, world = shard
    count = len(rows) if limit is None else min(limit, len(rows))
    return [i for i in range(count) if i % world == rank]


def answer_rows(
    backend: GenerationBackend,
    rows: AuditRows,
    store: PredictionStore,
    batch_size: int,
    *,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    model_name: str = "the model",
) -> AuditProgress:
    """Answer the selected rows not yet in `store`, one durable append per batch."""
    from tqdm.auto import tqdm

    selected = _selected(rows, limit, shard)
    ids = rows.ids()
    todo = [i for i in selected if ids[i] not in store.done]
    result = AuditProgress(rows=len(selected), resumed=len(selected) - len(todo))
    result.dropped_partial_line = store.dropped_partial_line
    multimodal = is_multimodal(backend.processor)
    # tqdm's rate is over the rows answered by this run: `initial` rows were done before it started.
    with tqdm(total=len(selected), initial=result.resumed, unit="row", desc="audit", disable=not progress) as bar:
        for batch in rows.batches(todo, batch_size):
            records, conversations, images = [], [], []
            for index, row in batch:
                row_id = ids[index]
                reference = row.get(SOLUTION_COLUMN)
                if reference is None or not str(reference).strip():
                    result.no_reference.append(row_id)
                    continue
                try:
                    row_images = rows.images(row) if multimodal else []  # a text-only model reads the text
                except ValueError as err:
                    result.image_errors.append((row_id, str(err)))
                    continue
                records.append(rows.record(index, row))
                conversations.append(row["prompt"])
                images.append(row_images)
            if records:
                texts = render_prompts(backend.processor, conversations, model_name)
                prompts = [PromptInput(t, i) for t, i in zip(texts, images, strict=True)]
                completions = backend.generate(prompts)
                for record, completion in zip(records, completions, strict=True):
                    record["prediction"] = completion
                result.answered += store.append(records)
            bar.update(len(batch))
    return result


def shard_file(rank: int, world: int) -> str:
    return PREDICTIONS_FILE if world == 1 else f"predictions.rank{rank}-of-{world}.jsonl"


def merge_shards(out_dir: str | Path, world: int, order: Sequence[str]) -> Path:
    """Join the processes' predictions files into ``predictions.jsonl`` in row order (`order`: row ids)."""
    out = Path(out_dir)
    target = out / PREDICTIONS_FILE
    if world == 1:
        return target
    lines: dict[str, str] = {}
    for rank in range(world):
        path = out / shard_file(rank, world)
        PredictionStore(path)  # drops a partial last line, refuses duplicates
        with open(path, encoding="utf-8") as f:
            for raw in f:
                if raw.strip():
                    lines[json.loads(raw)["id"]] = raw
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(lines[i] for i in order if i in lines))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(target)
    return target


def record_manifest(settings: AuditSettings, rows: AuditRows) -> None:
    """Check OUT against the audit it holds, if any (`_check_manifest`), and record this audit's manifest.

    `run_audit` does this in process 0; a sharded audit calls it in process 0 before any process writes
    its answers, or a fast process's file could be taken for another run's.
    """
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = audit_fingerprint(rows, settings.model, settings.chat_template)
    _check_manifest(out, {**settings.manifest(), "fingerprint": fingerprint}, settings.overwrite)


def run_audit(
    settings: AuditSettings,
    *,
    rows: AuditRows | None = None,
    backend: GenerationBackend | None = None,
    shard: tuple[int, int] = (0, 1),
    manifest_recorded: bool = False,
) -> AuditProgress:
    """Answer the split into ``OUT/predictions.jsonl`` (resuming); the report is `fair_trl.audit.report`'s.

    `rows` and `backend` default to loading ``settings.dataset`` and ``settings.model``; the recipe passes
    its own test split. With `shard` = (rank, world) > 1 process, each writes its own file (`merge_shards`).
    `manifest_recorded`: the caller ran `record_manifest` already (a sharded audit must, before any process
    writes), so process 0 does not hash the weights and data again.
    """
    out = Path(settings.output_dir)
    check_output_dir(out, {"--model": settings.model, "--dataset": settings.dataset})
    # The model and the data load before anything in `out` is touched: a typo must not cost earlier answers.
    if rows is None:
        rows = load_rows(
            settings.dataset, settings.split, settings.attributes, settings.dataset_options, settings.id_column
        )
    if backend is None:
        backend = load_backend(
            settings.backend,
            settings.model,
            settings.generation(),
            chat_template=settings.chat_template,
            device=settings.device,
            dtype=settings.dtype,
        )
    out.mkdir(parents=True, exist_ok=True)
    if shard[0] == 0 and not manifest_recorded:
        record_manifest(settings, rows)
    store = PredictionStore(out / shard_file(*shard))
    return answer_rows(
        backend,
        rows,
        store,
        settings.batch_size,
        limit=settings.limit,
        shard=shard,
        progress=settings.progress,
        model_name=settings.model,
    )


def write_audit_report(settings: AuditSettings, progress: AuditProgress) -> tuple[dict[str, Any], dict[str, Path]]:
    """The report of the whole ``OUT/predictions.jsonl`` and what this run did: (report, paths written by name)."""
    from fair_trl.audit.report import audit_report, write_report

    out = Path(settings.output_dir)
    report = audit_report(
        out / PREDICTIONS_FILE,
        settings.attributes,
        n_bootstrap=settings.bootstrap,
        seed=settings.seed,
        age_bins=settings.age_bins,
        max_age=settings.max_age,
        label_sets=settings.label_sets,
    )
    info = {
        "settings": {**settings.manifest(), "batch_size": settings.batch_size, "limit": settings.limit},
        "rows": progress.rows,
        "resumed": progress.resumed,
        "answered": progress.answered,
        "image_errors": progress.image_errors,
        "no_reference": progress.no_reference,
        "dropped_partial_line": progress.dropped_partial_line,
    }
    return report, write_report(out, report, info, plots=settings.plots)


def audit(
    settings: AuditSettings,
    *,
    rows: AuditRows | None = None,
    backend: GenerationBackend | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """`run_audit`, then the report of the whole predictions file: (report, paths written by name)."""
    return write_audit_report(settings, run_audit(settings, rows=rows, backend=backend))
