"""The demo's partial-credit reward: any label a completion mentions counts, with Jaccard overlap.

A tiny model that has not learnt the \\boxed{} format still earns signal from it; `accuracy_reward`
in `fair_trl.rewards` is the strict version used with real models.
"""

from __future__ import annotations

from fair_trl.labels import canonical_labels
from fair_trl.metrics import to_label_set
from fair_trl.rewards import completion_text, matcher_for

__all__ = ["jaccard_reward", "mentioned_labels"]


def mentioned_labels(text: str, labels: tuple[str, ...], longest: int = 3) -> frozenset[str]:
    """Labels named anywhere in `text`, by any run of up to `longest` consecutive words."""
    matcher = matcher_for(labels)
    words = text.split()
    found = set()
    for n in range(1, longest + 1):
        for i in range(len(words) - n + 1):
            found |= matcher.match(" ".join(words[i : i + n]))
    return frozenset(found)


def jaccard_reward(completion, solution, dataset: str) -> float:
    """Overlap (Jaccard) of the labels a completion mentions with the reference labels."""
    mentioned = mentioned_labels(completion_text(completion), canonical_labels(dataset) or ())
    truth = to_label_set(solution)
    union = mentioned | truth
    return len(mentioned & truth) / len(union) if union else 0.0
