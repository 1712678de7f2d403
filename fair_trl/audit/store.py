"""`OUT/predictions.jsonl`: the audit's answers, appended batch by batch so an interrupted run resumes.

Each batch is appended with one ``write`` of whole lines, then flushed and fsynced before the next batch
starts, so a kill (SIGKILL included) loses at most the batch in flight. A kill inside that one write can
leave a partial last line; opening the store drops it (it is the unfinished batch), so no line is ever read
half-written and no row is answered twice. Rows are keyed by their ``id``; a file holding an id twice was
not written by one audit, and opening it says so rather than guessing which answer counts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PREDICTIONS_FILE", "PredictionStore"]

PREDICTIONS_FILE = "predictions.jsonl"


class PredictionStore:
    """Append-only predictions file; `done` holds the ids of the rows already answered."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dropped_partial_line = self._drop_partial_line()
        self.done: set[str] = set()
        self._read_ids()

    def _drop_partial_line(self) -> bool:
        if not self.path.is_file():
            return False
        with open(self.path, "rb+") as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return False
            f.truncate(data.rfind(b"\n") + 1)  # rfind is -1 when the only line is partial: truncate to 0
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read_ids(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    row_id = json.loads(raw)["id"]
                except (ValueError, KeyError, TypeError):
                    raise ValueError(
                        f"{self.path}, line {number}: not a line fair-trl audit writes (a JSON object with an 'id'); "
                        "pass --overwrite to start again"
                    ) from None
                if row_id in self.done:
                    raise ValueError(
                        f"{self.path}, line {number}: row id {row_id!r} appears twice; this file was not written by "
                        "one audit (two audits into the same folder?). Pass --overwrite to start again"
                    )
                self.done.add(row_id)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append `rows` as one durable write; returns how many were written."""
        rows = list(rows)
        if not rows:
            return 0
        data = "".join(json.dumps(dict(row), ensure_ascii=False, default=str) + "\n" for row in rows)
        with open(self.path, "ab") as f:
            f.write(data.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        self.done.update(row["id"] for row in rows)
        return len(rows)
