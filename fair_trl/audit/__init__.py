"""`fair-trl audit` and `fair-trl compare`: the fairness of any model's answers, and of one model against another.

* `backends`: transformers ``generate`` (``hf``) and offline vLLM (``vllm``) behind one interface.
* `inputs`: the split to answer, its required columns, each row's prompt and image.
* `store`: ``OUT/predictions.jsonl``, appended durably batch by batch, so an audit resumes.
* `run`: the answering loop (`run_audit`) and `audit`, which also writes the report.
* `report`: `fair-trl evaluate`'s numbers with bootstrap intervals, ``report.md``, ``fairness.json``.
* `plots`: the figures, drawn from the report dicts.
* `compare`: two predictions files on the same rows, with paired bootstrap intervals.
"""

from fair_trl.audit.run import AuditSettings, audit, run_audit

__all__ = ["AuditSettings", "audit", "run_audit"]
