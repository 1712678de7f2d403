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

import itertools
import operator
import statistics
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from fair_trl.labels import Labels, dataset_classes, label_key, to_label_set

__all__ = [
    "GROUP_METRICS",
    "SUMMARY_KEYS",
    "compute_fairness",
    "compute_fairness_by_attribute",
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


def _counts_by_group(
    outcomes: np.ndarray, kinds: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, ...]:
    """TP, FP, FN, TN per (group, class) and n per group, from the indicator matrices of `_Encoded`.

    ``outcomes``: per kind of sample (a distinct pair of reference and predicted label sets), its TP,
    FP and FN indicators per class side by side; ``kinds``: each sample's kind; ``codes``: each sample's
    group, 0 .. n_groups - 1, or -1 for none. The (groups x kinds) counts times the outcomes count
    everything at once, in integers.
    """
    known = codes >= 0
    n_kinds = len(outcomes)
    members = np.bincount(codes[known] * n_kinds + kinds[known], minlength=n_groups * n_kinds)
    members = members.reshape(n_groups, n_kinds)
    tp, fp, fn = np.split(members @ outcomes, 3, axis=1)
    n = members.sum(axis=1)
    return tp, fp, fn, n[:, None] - tp - fp - fn, n


def _scores_by_group(tp, fp, fn, tn, n) -> list[dict[str, float]]:
    """Each group's one-vs-rest scores on one dataset (a row of the (groups x classes) counts): class means."""
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    per_class = {
        "acc": (tp + tn) / n[:, None],
        "f1": _ratio(2 * precision * recall, precision + recall),
        "tpr": recall,
        "fpr": _ratio(fp, fp + tn),
        "fdr": _ratio(fp, fp + tp),
    }
    means = {name: values.mean(axis=1).tolist() for name, values in per_class.items()}
    return [{**{name: means[name][g] for name in per_class}, "n": int(n[g])} for g in range(len(n))]


class _Encoded:
    """Inputs checked once and turned into per-dataset indicator matrices, so bootstrap resamples are cheap.

    Label sets repeat (a few classes, many samples): each distinct one is parsed and encoded once, and
    per dataset each distinct (reference, prediction) pair is a kind of sample with one row of TP / FP /
    FN indicators per class (``outcomes``); ``kinds`` gives each sample's. `with_groups` attaches one
    attribute's groups (integer codes, in the sorted order of their values) without encoding again.
    """

    def __init__(self, predictions, references, datasets, classes, groups=None):
        lengths = {len(predictions), len(references), len(datasets)} | ({len(groups)} if groups is not None else set())
        if len(lengths) != 1:
            shown = f" and groups ({len(groups)})" if groups is not None else ""
            raise ValueError(
                f"predictions ({len(predictions)}), references ({len(references)}), datasets ({len(datasets)})"
                f"{shown} must have the same length"
            )
        ref_codes, ref_sets = _label_set_codes(references)
        pred_codes, pred_sets = _label_set_codes(predictions)
        refs = [ref_sets[c] for c in ref_codes.tolist()] if classes is None else None
        self.size = len(datasets)
        self.names = list(dict.fromkeys(datasets))
        self.classes = _resolve_classes(classes, self.names, datasets, refs)
        code_of = {name: k for k, name in enumerate(self.names)}
        dataset_codes = np.fromiter(map(code_of.__getitem__, datasets), dtype=np.intp, count=len(datasets))
        self.rows: dict[str, np.ndarray] = {}
        self.kinds: dict[str, np.ndarray] = {}
        self.outcomes: dict[str, np.ndarray] = {}
        for k, name in enumerate(self.names):
            rows = np.flatnonzero(dataset_codes == k)
            index = {label_key(c): j for j, c in enumerate(self.classes[name])}
            truth, truth_of = _indicators(ref_sets, ref_codes[rows], rows, index, name, self.classes[name])
            # A predicted label outside the class list names no class: negative for every class.
            predicted, predicted_of = _indicators(pred_sets, pred_codes[rows], rows, index)
            kinds, kind_of = np.unique(truth_of * len(predicted) + predicted_of, return_inverse=True)
            truth, predicted = truth[kinds // len(predicted)], predicted[kinds % len(predicted)]
            outcomes = np.concatenate([truth & predicted, ~truth & predicted, truth & ~predicted], axis=1)
            self.rows[name] = rows
            self.kinds[name] = kind_of.reshape(-1)
            self.outcomes[name] = outcomes.astype(np.int64)
        self.group_codes: dict[str, np.ndarray] = {}
        self.group_values: list = []
        if groups is not None:
            self._set_groups(groups)

    def with_groups(self, groups: Sequence[Hashable | None]) -> _Encoded:
        """The same encoded labels with `groups` (one per sample) as the attribute."""
        if len(groups) != self.size:
            raise ValueError(
                f"groups has {len(groups)} entries for {self.size} samples: they must have the same length"
            )
        encoded = object.__new__(_Encoded)
        encoded.__dict__.update(self.__dict__)
        encoded._set_groups(groups)
        return encoded

    def _set_groups(self, groups: Sequence[Hashable | None]) -> None:
        distinct = dict.fromkeys(groups)
        self.group_values = sorted((g for g in distinct if g is not None), key=str)
        code_of = {g: c for c, g in enumerate(self.group_values)}
        code_of[None] = -1
        codes = np.fromiter(map(code_of.__getitem__, groups), dtype=np.intp, count=len(groups))
        self.group_codes = {name: codes[rows] for name, rows in self.rows.items()}


def _label_set_codes(values: Sequence[Labels]) -> tuple[np.ndarray, list[frozenset[str]]]:
    """(a code per value, the `to_label_set` of each code): each distinct value is parsed once."""
    try:
        distinct = {value: code for code, value in enumerate(dict.fromkeys(values))}
    except TypeError:  # lists or sets of labels are not hashable: parse one by one
        sets = [to_label_set(value) for value in values]
        return np.arange(len(sets)), sets
    codes = np.fromiter(map(distinct.__getitem__, values), dtype=np.intp, count=len(values))
    return codes, [to_label_set(value) for value in distinct]


def _indicators(label_sets, codes, rows, index, name=None, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """(distinct label sets x classes) booleans, set i has class j, and each row's distinct set.

    With `name`, a label outside the classes is an error (references); without, it is ignored
    (predictions)."""
    present, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    table = np.zeros((len(present), len(index)), dtype=bool)
    for row, code in sorted(enumerate(present.tolist()), key=lambda item: first[item[0]]):
        for label in label_sets[code]:
            j = index.get(label_key(label))
            if j is not None:
                table[row, j] = True
            elif name is not None:
                raise ValueError(
                    f"sample {int(rows[first[row]])}: reference label {label!r} is not a class of dataset "
                    f"{name!r}; classes are {list(classes)}"
                )
    return table, inverse.reshape(-1)


def _resolve_classes(classes, names, datasets, refs) -> dict[str, tuple[str, ...]]:
    if classes is None:  # without a class list, exactly the labels the references use
        return dataset_classes(datasets, refs, use_known=False)
    missing = [name for name in names if name not in classes]
    if missing:
        raise ValueError(f"classes has no label list for dataset(s) {missing}; it covers {sorted(classes)}")
    return {name: tuple(classes[name]) for name in names}


def _summarise(encoded: _Encoded, resample: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    per_group: dict[str, dict[Any, dict[str, float]]] = {}
    known = encoded.group_values
    for name in encoded.names:
        rows = resample[name] if resample is not None else slice(None)
        kinds, codes = encoded.kinds[name][rows], encoded.group_codes[name][rows]
        counts = _counts_by_group(encoded.outcomes[name], kinds, codes, len(known))
        present = np.flatnonzero(counts[-1]).tolist()  # the groups the (re)sample has, in sorted order
        scores = _scores_by_group(*(count[present] for count in counts))
        per_group[name] = {known[g]: score for g, score in zip(present, scores, strict=True)}

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
    encoded = _Encoded(predictions, references, datasets, classes, groups)
    return _fairness(encoded, groups, n_bootstrap, confidence, seed)


def compute_fairness_by_attribute(
    predictions: Sequence[Labels],
    references: Sequence[Labels],
    datasets: Sequence[str],
    groups: Mapping[str, Sequence[Hashable | None]],
    classes: Mapping[str, Sequence[str]] | None = None,
    *,
    n_bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """`compute_fairness` for each attribute of the same samples: ``{attribute: result}``.

    ``groups``: {attribute: one group (or None) per sample}. The labels are parsed and encoded once for
    all attributes, which is what a training run's fairness log (sex and age of the same rollouts) needs.
    """
    encoded = _Encoded(predictions, references, datasets, classes)
    return {
        attribute: _fairness(encoded.with_groups(values), values, n_bootstrap, confidence, seed)
        for attribute, values in groups.items()
    }


def _fairness(
    encoded: _Encoded, groups: Sequence[Hashable | None], n_bootstrap: int, confidence: float, seed: int
) -> dict[str, Any]:
    result = _summarise(encoded)
    out: dict[str, Any] = dict(result.pop("summary"))
    out["per_group"] = result["per_group"]
    out["per_dataset"] = {name: dataset_disparities(g) for name, g in result["per_group"].items()}
    out["group_values"] = result["group_values"]
    out["classes"] = {name: list(c) for name, c in encoded.classes.items()}
    out["n"] = encoded.size
    out["n_unknown_group"] = sum(map(operator.is_, groups, itertools.repeat(None)))
    if n_bootstrap > 0:
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        rng = np.random.default_rng(seed)
        draws = {key: [] for key in SUMMARY_KEYS}
        for _ in range(n_bootstrap):
            resample = {
                name: rng.integers(0, len(encoded.rows[name]), len(encoded.rows[name])) for name in encoded.names
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
    encoded = [_Encoded(p, references, datasets, classes, groups) for p in prediction_sets]
    if not encoded:
        return []
    first = encoded[0]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_bootstrap):
        resample = {name: rng.integers(0, len(first.rows[name]), len(first.rows[name])) for name in first.names}
        draws.append([_summarise(e, resample) for e in encoded])
    return draws
