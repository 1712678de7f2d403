"""Each completion's domain and group key across the whole batch, and what the trainer logs of them.

The estimator needs the global batch's domains and groups in the order of the gathered rewards. Raw
values are gathered and keyed on every process, so keys and invalid-value counts agree everywhere;
each prompt's G completions are contiguous copies of one row, so a prompt is keyed (and counted) once.
"""

from __future__ import annotations

from typing import Any

from accelerate.utils import gather_object

from fair_trl.groups import GroupKeyer, domain_key

__all__ = ["estimator_metrics", "gather_batch_groups"]


def gather_batch_groups(
    inputs: list[dict[str, Any]], args: Any, keyer: GroupKeyer, num_generations: int
) -> tuple[list[str], list[str | None]]:
    """Per-completion domains and group keys of the global batch (every process's rows), identical on every rank."""
    local = [(domain_key(row, args.domain_column), {c: row.get(c) for c in args.demographic_columns}) for row in inputs]
    rows = gather_object(local)
    g = num_generations
    domains = [domain for domain, _ in rows]
    prompt_groups = keyer.keys((demographics for _, demographics in rows[::g]), domains[::g])
    return domains, [group for group in prompt_groups for _ in range(g)]


def estimator_metrics(estimator: Any, groups: list[str | None], keyer: GroupKeyer) -> dict[str, float]:
    """The step's weights (``<metric_prefix>/weight/<key>``), latent cluster count, unknown share, invalid values."""
    info = estimator.last_info
    metrics = {f"{estimator.metric_prefix}/weight/{key}": weight for key, weight in info.get("weight", {}).items()}
    if "num_clusters" in info:
        metrics["fair/num_clusters"] = float(info["num_clusters"])
    metrics["fair/unknown_group_frac"] = sum(g is None for g in groups) / max(len(groups), 1)
    metrics["fair/invalid_demographics"] = float(sum(keyer.summary()["invalid"].values()))
    return metrics
