"""The final evaluation of a training run, through the audit: what the recipe calls after `save_model`.

The saved model directory (what `push_to_hub` uploads) is audited, not the trainer's in-memory copy, so the
model card's numbers are those ``fair-trl audit --model <pushed model>`` gives on the same split with the same
settings. With several processes each answers every world-th row of the split on its own device into its
own file; process 0 joins them in row order and writes the report. The card then carries the audit's tables,
its per-group F1 plot and the command that reproduces it.
"""

from __future__ import annotations

import logging
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fair_trl.audit.backends import load_backend
from fair_trl.audit.inputs import prepare_rows
from fair_trl.audit.report import PLOT_FILES
from fair_trl.audit.run import (
    AuditProgress,
    AuditSettings,
    merge_shards,
    record_manifest,
    run_audit,
    write_audit_report,
)

__all__ = ["AUDIT_DIR", "audit_trained_model", "reproduce_command"]

logger = logging.getLogger(__name__)

AUDIT_DIR = "audit"


def reproduce_command(settings: AuditSettings, model: str) -> str:
    """The `fair-trl audit` command line that answers the same rows with the same settings."""
    parts = ["fair-trl", "audit", "--model", model, "--dataset", settings.dataset, "--split", settings.split]
    for key, value in settings.dataset_options.items():
        parts += ["-O", f"{key}={value}"]
    parts += ["--backend", settings.backend, "--max-new-tokens", str(settings.max_new_tokens)]
    parts += ["--batch-size", str(settings.batch_size), "--attributes", *settings.attributes]
    if settings.limit is not None:
        parts += ["--limit", str(settings.limit)]
    parts += ["--bootstrap", str(settings.bootstrap), "--seed", str(settings.seed), "-o", "audit"]
    return shlex.join(parts)


def audit_trained_model(
    trainer: Any,
    eval_dataset: Any,
    model_dir: str | Path,
    *,
    source: str,
    split: str,
    dataset_options: Mapping[str, Any] | None = None,
    backend: str = "hf",
    batch_size: int = 16,
    max_new_tokens: int = 256,
    bootstrap: int = 1000,
    hub_model_id: str | None = None,
    subset_note: str | None = None,
) -> dict[str, Any] | None:
    """Audit the model saved in `model_dir` on `eval_dataset`; the report on process 0, None elsewhere.

    Every process must call it. `source`, `split` and `dataset_options` say where `eval_dataset` came from,
    for the reproduce command in the card; `subset_note` says how it was subsampled, if it was.
    """
    accelerator = trainer.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    out = Path(model_dir) / AUDIT_DIR
    attributes = tuple(trainer.args.demographic_columns or ())
    settings = AuditSettings(
        model=str(model_dir),
        dataset=source,
        output_dir=str(out),
        split=split,
        dataset_options=dict(dataset_options or {}),
        backend=backend,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        attributes=attributes,
        bootstrap=bootstrap,
        seed=trainer.args.seed,
        age_bins=tuple(trainer.args.age_bins),
        max_age=trainer.args.max_age,
        progress=accelerator.is_local_main_process,
    )
    rows = prepare_rows(eval_dataset, source, split, attributes)
    if rank == 0:
        if out.exists():  # a rerun of training audits the new model from scratch
            shutil.rmtree(out)
        record_manifest(settings, rows)
    accelerator.wait_for_everyone()  # before any process writes its file: theirs must find the manifest there
    engine = load_backend(backend, str(model_dir), settings.generation(), device=str(accelerator.device))
    progress = run_audit(settings, rows=rows, backend=engine, shard=(rank, world), manifest_recorded=True)
    if progress.image_errors and rank != 0:  # process 0's go into the report
        logger.warning("process %d: %d test rows not answered, their image did not decode: %s", rank,
                       len(progress.image_errors), progress.image_errors[:20])  # fmt: skip
    accelerator.wait_for_everyone()
    if rank != 0:
        return None
    predictions = merge_shards(out, world, rows.ids())
    answered = sum(1 for line in predictions.read_text(encoding="utf-8").splitlines() if line.strip())
    # Image failures and rows without a reference: process 0's; the other processes logged theirs.
    joined = AuditProgress(rows=len(rows), answered=answered, image_errors=progress.image_errors,
                           no_reference=progress.no_reference)  # fmt: skip
    report, written = write_audit_report(settings, joined)
    command = reproduce_command(settings, hub_model_id or str(model_dir))
    note = (
        f"These numbers are `fair-trl audit` of this model on the {split} split: greedy answers, at most "
        f"{max_new_tokens} new tokens, {report['samples']} rows, 95% bootstrap intervals in `{AUDIT_DIR}/report.md`"
        + (f" ({subset_note})" if subset_note else "")
        + f". Reproduce with\n\n```bash\n{command}\n```"
    )
    figures = []
    if "group_f1" in written:
        figures.append(("F1 per group with 95% bootstrap intervals", f"{AUDIT_DIR}/{PLOT_FILES['group_f1']}"))
    trainer.use_audit_for_card(report["attributes"], figures=figures, note=note)
    return report
