"""The paper's performance and fairness metrics (Appendix B.1), as its published tables compute them.

Every class of a dataset is scored one-vs-rest within that dataset, per demographic group (eq. 3-4):
TP, FP, TN, FN per (class, group), then Acc = (TP + TN) / n, TPR = recall, FPR, FDR, F1. A ratio with a
zero denominator is 0.0. A group's value on a dataset is the mean over the dataset's classes.

* Per dataset: sigma (sample std, n - 1, as the tables use although eq. 11 prints 1/|G|) and
  Delta (max - min) of the group values.
* Overall Acc and F1 (eq. 5-6): mean over the groups present in each dataset, then over datasets.
* A group's overall value (TPR_g of eq. 7): its dataset values averaged over the datasets where it occurs.
  EOD, PP, FPR_diff, Delta Acc, Delta F1 are max - min of those (eq. 7-10); sigma Acc and sigma F1
  their sample std; Acc_ES = Acc / (1 + sigma_Acc), F1_ES = F1 / (1 + sigma_F1) (eq. 12).

Samples whose group is None (unknown) are left out of every group value. One attribute at a time:
call once for age groups, once for sex.
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from fair_trl.labels import Labels, dataset_classes, label_key, to_label_set

__all__ = [
    "GROUP_METRICS",
    "SUMMARY_KEYS",
    "compute_fairness",
    "dataset_classes",
    "dataset_disparities",
    "spread",
    "to_label_set",
]

GROUP_METRICS = ("acc", "f1", "tpr", "fpr", "fdr")
SUMMARY_KEYS = (
    "acc",
    "f1",
    "EOD",
    "PP",
    "FPR_diff",
    "delta_acc",
    "delta_f1",
    "sigma_acc",
    "sigma_f1",
    "acc_es",
    "f1_es",
)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator elementwise, 0.0 where the denominator is 0 (the tables' convention)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(sigma, Delta) of group values: sample std (n - 1) and max - min; both 0.0 for a single group."""
    if len(values) < 2:
        return 0.0, 0.0
    return statistics.stdev(values), max(values) - min(values)


def dataset_disparities(groups: Mapping[Hashable, Mapping[str, float]]) -> dict[str, float]:
    """The per-dataset sigma/Delta columns of the appendix tables from the dataset's per-group values."""
    out: dict[str, float] = {}
    for metric in ("acc", "f1", "tpr", "fpr"):
        sigma, delta = spread([g[metric] for g in groups.values()])
        if metric != "fpr":
            out[f"sigma_{metric}"] = sigma
        out[f"delta_{metric}"] = delta
    return out


def _group_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """One group's one-vs-rest scores on one dataset: boolean (samples x classes) matrices in, class means out."""
    tp = (truth & predicted).sum(axis=0)
    fp = (~truth & predicted).sum(axis=0)
    fn = (truth & ~predicted).sum(axis=0)
    tn = (~truth & ~predicted).sum(axis=0)
    n = truth.shape[0]
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    per_class = {
        "acc": (tp + tn) / n,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "tpr": recall,
        "fpr": _ratio(fp, fp + tn),
        "fdr": _ratio(fp, fp + tp),
    }
    scores = {name: float(values.mean()) for name, values in per_class.items()}
    scores["n"] = n
    return scores


class _Encoded:
    """Inputs checked once and turned into per-dataset indicator matrices, so bootstrap resamples are cheap."""

    def __init__(self, predictions, references, datasets, groups, classes):
        lengths = {len(predictions), len(references), len(datasets), len(groups)}
        if len(lengths) != 1:
            raise ValueError(
                f"predictions ({len(predictions)}), references ({len(references)}), datasets ({len(datasets)}) "
                f"and groups ({len(groups)}) must have the same length"
            )
        refs = [to_label_set(r) for r in references]
        preds = [to_label_set(p) for p in predictions]
        self.names = list(dict.fromkeys(datasets))
        self.classes = _resolve_classes(classes, self.names, datasets, refs)
        self.truth: dict[str, np.ndarray] = {}
        self.predicted: dict[str, np.ndarray] = {}
        self.groups: dict[str, np.ndarray] = {}
        for name in self.names:
            rows = [i for i, d in enumerate(datasets) if d == name]
            index = {label_key(c): j for j, c in enumerate(self.classes[name])}
            truth = np.zeros((len(rows), len(index)), dtype=bool)
            predicted = np.zeros_like(truth)
            for r, i in enumerate(rows):
                for label in refs[i]:
                    if label_key(label) not in index:
                        raise ValueError(
                            f"sample {i}: reference label {label!r} is not a class of dataset {name!r}; "
                            f"classes are {list(self.classes[name])}"
                        )
                    truth[r, index[label_key(label)]] = True
                # A predicted label outside the class list names no class: negative for every class.
                for label in preds[i]:
                    j = index.get(label_key(label))
                    if j is not None:
                        predicted[r, j] = True
            self.truth[name] = truth
            self.predicted[name] = predicted
            self.groups[name] = np.array([groups[i] for i in rows], dtype=object)


def _resolve_classes(classes, names, datasets, refs) -> dict[str, tuple[str, ...]]:
    if classes is None:  # without a class list, exactly the labels the references use
        return dataset_classes(datasets, refs, use_known=False)
    missing = [name for name in names if name not in classes]
    if missing:
        raise ValueError(f"classes has no label list for dataset(s) {missing}; it covers {sorted(classes)}")
    return {name: tuple(classes[name]) for name in names}


def _summarise(encoded: _Encoded, resample: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    per_group: dict[str, dict[Any, dict[str, float]]] = {}
    for name in encoded.names:
        rows = resample[name] if resample is not None else slice(None)
        truth, predicted, groups = encoded.truth[name][rows], encoded.predicted[name][rows], encoded.groups[name][rows]
        known = [g for g in dict.fromkeys(groups.tolist()) if g is not None]
        per_group[name] = {g: _group_scores(truth[groups == g], predicted[groups == g]) for g in sorted(known, key=str)}

    group_values: dict[Any, dict[str, float]] = {}
    members = sorted({g for groups in per_group.values() for g in groups}, key=str)
    for g in members:
        occurrences = [groups[g] for groups in per_group.values() if g in groups]
        group_values[g] = {m: float(np.mean([o[m] for o in occurrences])) for m in GROUP_METRICS}
        group_values[g]["n"] = int(sum(o["n"] for o in occurrences))
        group_values[g]["datasets"] = len(occurrences)

    scored = [groups for groups in per_group.values() if groups]
    acc = float(np.mean([np.mean([s["acc"] for s in groups.values()]) for groups in scored])) if scored else 0.0
    f1 = float(np.mean([np.mean([s["f1"] for s in groups.values()]) for groups in scored])) if scored else 0.0
    summary = {"acc": acc, "f1": f1}
    for key, metric in (("EOD", "tpr"), ("PP", "fdr"), ("FPR_diff", "fpr"), ("delta_acc", "acc"), ("delta_f1", "f1")):
        summary[key] = spread([v[metric] for v in group_values.values()])[1]
    summary["sigma_acc"] = spread([v["acc"] for v in group_values.values()])[0]
    summary["sigma_f1"] = spread([v["f1"] for v in group_values.values()])[0]
    summary["acc_es"] = acc / (1 + summary["sigma_acc"])
    summary["f1_es"] = f1 / (1 + summary["sigma_f1"])
    return {"per_group": per_group, "group_values": group_values, "summary": summary}


def compute_fairness(
    predictions: Sequence[Labels],
    references: Sequence[Labels],
    datasets: Sequence[str],
    groups: Sequence[Hashable | None],
    classes: Mapping[str, Sequence[str]] | None = None,
    *,
    n_bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The Appendix B.1 suite for one demographic attribute.

    Returns the top-level metrics (`SUMMARY_KEYS`), ``per_group[dataset][group]`` (n, acc, f1, tpr, fpr,
    fdr), ``per_dataset[dataset]`` (sigma/delta columns of the appendix tables), ``group_values[group]``
    (a group's values averaged over the datasets where it occurs), ``n`` and ``n_unknown_group``. With
    ``n_bootstrap`` > 0, ``ci[key] = (low, high)``: percentile intervals over resamples drawn with
    replacement within each dataset, so each dataset keeps its size.
    """
    encoded = _Encoded(predictions, references, datasets, groups, classes)
    result = _summarise(encoded)
    out: dict[str, Any] = dict(result.pop("summary"))
    out["per_group"] = result["per_group"]
    out["per_dataset"] = {name: dataset_disparities(g) for name, g in result["per_group"].items()}
    out["group_values"] = result["group_values"]
    out["classes"] = {name: list(c) for name, c in encoded.classes.items()}
    out["n"] = len(datasets)
    out["n_unknown_group"] = sum(g is None for g in groups)
    if n_bootstrap > 0:
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        rng = np.random.default_rng(seed)
        draws = {key: [] for key in SUMMARY_KEYS}
        for _ in range(n_bootstrap):
            resample = {
                name: rng.integers(0, len(encoded.groups[name]), len(encoded.groups[name])) for name in encoded.names
            }
            summary = _summarise(encoded, resample)["summary"]
            for key in SUMMARY_KEYS:
                draws[key].append(summary[key])
        tail = (1 - confidence) / 2 * 100
        out["ci"] = {
            key: tuple(float(q) for q in np.percentile(draws[key], [tail, 100 - tail])) for key in SUMMARY_KEYS
        }
    return out


def bootstrap_summaries(
    prediction_sets: Sequence[Sequence[Labels]],
    references: Sequence[Labels],
    datasets: Sequence[str],
    groups: Sequence[Hashable | None],
    classes: Mapping[str, Sequence[str]] | None = None,
    *,
    n_bootstrap: int,
    seed: int = 0,
) -> list[list[dict[str, Any]]]:
    """Paired bootstrap draws: ``draws[b][k]`` scores prediction set ``k`` on resample ``b``.

    Every set is scored on the same resampled rows (drawn within each dataset, as `compute_fairness` draws
    its intervals, with the same generator: one set and the same seed give exactly its ``ci`` draws), so
    differences between two models' draws are paired. Each entry holds ``summary`` (`SUMMARY_KEYS`),
    ``per_group[dataset][group]`` and ``group_values[group]``; a group absent from a resample is absent there.
    """
    encoded = [_Encoded(p, references, datasets, groups, classes) for p in prediction_sets]
    if not encoded:
        return []
    first = encoded[0]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_bootstrap):
        resample = {name: rng.integers(0, len(first.groups[name]), len(first.groups[name])) for name in first.names}
        draws.append([_summarise(e, resample) for e in encoded])
    return draws
