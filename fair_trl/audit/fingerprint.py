"""What an audit's answers depend on beyond its options: the data's content, the model's weights, the template.

Options compared as strings cannot see a dataset folder rebuilt with another seed, weights replaced at the
same path, or a chat template file edited in place; a resumed audit would then mix answers to two different
questions. `audit_fingerprint` hashes those contents so `fair_trl.audit.run` can refuse such a resume.

* data: SHA-256 over every row of the split, in order: its prompt, reference, demographic and domain
  values, id and image bytes (or path when the image has no bytes);
* model: for a local folder, the SHA-256 of each weight file and of ``config.json``; for a Hub id, the
  revision of the cached snapshot (a Hub id names a fixed repository; its revision is what can move);
* chat template: the SHA-256 of the file given with ``--chat-template``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["audit_fingerprint", "data_hash", "file_hash", "model_fingerprint"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CHUNK = 1 << 22


def file_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(model: str) -> dict[str, Any]:
    """Hashes of a local model folder's weights and config; the cached revision of a Hub id (None if unknown)."""
    folder = Path(model)
    if folder.is_dir():
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
        )
        return {"files": {p.name: file_hash(p) for p in files}}
    revision = None
    try:
        from huggingface_hub import snapshot_download

        revision = Path(snapshot_download(model, local_files_only=True)).name
    except Exception:  # not cached, or not a repository id: the backend's own load says which
        pass
    return {"hub_id": model, "revision": revision}


def _row_bytes(value: Any) -> bytes:
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # an undecoded image
        return value.get("bytes") or str(value.get("path")).encode()
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False).encode()


def data_hash(dataset: Any, columns: list[str], batch_size: int = 256) -> str:
    """SHA-256 of `columns` of every row of `dataset`, in order (images undecoded, as the audit holds them)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(columns).encode())
    data = dataset.select_columns(columns)
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size]
        for values in zip(*(batch[c] for c in columns), strict=True):
            for value in values:
                if isinstance(value, list) and value and isinstance(value[0], dict) and "bytes" in value[0]:
                    chunks = [_row_bytes(v) for v in value]
                else:
                    chunks = [_row_bytes(value)]
                for chunk in chunks:
                    digest.update(len(chunk).to_bytes(8, "little"))
                    digest.update(chunk)
    return digest.hexdigest()


def audit_fingerprint(rows: Any, model: str, chat_template: str | None) -> dict[str, Any]:
    """The fingerprint an audit's manifest records (see the module docstring)."""
    from fair_trl.audit.inputs import PROMPT_COLUMN, SOLUTION_COLUMN

    wanted = [PROMPT_COLUMN, SOLUTION_COLUMN, *rows.attributes, rows.domain_column, rows.id_column, rows.image_column]
    columns = list(dict.fromkeys(c for c in wanted if c))
    return {
        "data": data_hash(rows.dataset, columns),
        "model": model_fingerprint(model),
        "chat_template": file_hash(chat_template) if chat_template and os.path.isfile(chat_template) else None,
    }
