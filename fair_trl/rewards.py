"""Answer extraction and the rewards FairGRPO trains on.

The authors' prompt asks for reasoning in <think> </think> and the answer in \\boxed{}; many models
answer in <answer> </answer> instead. The final answer is the last of either in the text. It is split
into labels (comma, semicolon, "and", "&") and each part is matched to the dataset's label set
case-insensitively, ignoring punctuation and spacing, through fair_trl.labels.SYNONYMS ("Nevus" is NV,
"BI-RADS 2" and "2" are the same BI-RADS class).

`accuracy_reward` and `format_reward` are TRL reward functions: TRL calls them with the completions and
every dataset column as keyword arguments, so they read `solution` (and `dataset` for the label set).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fair_trl.groups import ALL_DOMAINS, DEFAULT_DOMAIN_COLUMN, read_domain_column
from fair_trl.labels import SYNONYMS, canonical_labels, label_classes, label_key, read_label_sets, to_label_set

__all__ = [
    "AccuracyReward",
    "LabelMatcher",
    "accuracy_reward",
    "completion_text",
    "extract_answer",
    "format_reward",
    "matcher_for",
    "parse_prediction",
    "split_labels",
    "with_config_label_sets",
]

_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_TEXT_MACRO = re.compile(r"\\text\s*\{([^{}]*)\}")
_SEPARATORS = re.compile(r"\s*(?:,|;|&|\band\b)\s*", re.IGNORECASE)
_FORMAT = re.compile(r"^\s*<think>.+?</think>.*\\boxed\s*\{.+\}", re.DOTALL)


def _last_boxed(text: str) -> tuple[int, str] | None:
    """(start, content) of the last \\boxed{...} whose braces close, nested braces kept inside the content."""
    # Completions are long and answers short: jump back from "\boxed" to "\boxed", and from brace to
    # brace. Occurrences of "\boxed" cannot overlap, so each earlier one ends before the later starts.
    at = text.rfind("\\boxed")
    while at >= 0:
        match = _BOXED.match(text, at)
        if match:
            depth, start = 1, match.end()
            for brace in _BRACE.finditer(text, start):
                depth += 1 if brace.group() == "{" else -1
                if depth == 0:
                    return at, text[start : brace.start()]
        at = text.rfind("\\boxed", 0, at)
    return None


def _last_answer_tag(text: str) -> tuple[int, str] | None:
    """(start, content) of the last <answer>...</answer> (any case) of the tag pattern's matches."""
    # Only "<a" or "<A" can start one ("a" has no other case-insensitive match): try the pattern there.
    at = text.find("<")
    while at >= 0:
        if text[at + 1 : at + 2] in ("a", "A") and _ANSWER_OPEN.match(text, at):
            matches = list(_ANSWER_TAG.finditer(text, at))
            return (matches[-1].start(), matches[-1].group(1)) if matches else None
        at = text.find("<", at + 1)
    return None


def extract_answer(text: str) -> str | None:
    """The last \\boxed{...} or <answer>...</answer> content in `text`, stripped; None if there is neither."""
    boxed, tag = _last_boxed(text), _last_answer_tag(text)
    if boxed is None and tag is None:
        return None
    answer = (tag if boxed is None or (tag is not None and tag[0] > boxed[0]) else boxed)[1].strip()
    # \boxed{\text{NV}} is a common LaTeX habit.
    return _TEXT_MACRO.sub(r"\1", answer).strip() if "\\text" in answer else answer


def split_labels(answer: str) -> list[str]:
    return [part for part in _SEPARATORS.split(answer) if part.strip()]


class LabelMatcher:
    """Maps answer text onto a label set, through the labels' own spellings and their synonyms.

    Answers repeat (a model names the same few labels over and over), so each distinct answer is
    matched once and remembered, up to `memo_size` of them.
    """

    memo_size = 65_536

    def __init__(self, labels: Iterable[str]):
        self.labels = tuple(labels)
        self._lookup: dict[str, str] = {}
        for label in self.labels:
            for spelling in (label, *SYNONYMS.get(label, ())):
                self._lookup.setdefault(label_key(spelling), label)
        self._memo: dict[str, frozenset[str]] = {}
        self._exact_memo: dict[str, frozenset[str]] = {}

    def match(self, answer: str) -> frozenset[str]:
        """The labels `answer` names; parts naming none are dropped, so an answer naming no label gives {}."""
        found = self._memo.get(answer)
        if found is None:
            if len(self._memo) >= self.memo_size:
                self._memo.clear()
            found = self._memo[answer] = self._match(answer)
        return found

    def match_exact(self, answer: str) -> frozenset[str]:
        """The labels `answer` names, or {} when any of its parts names no label of the set."""
        found = self._exact_memo.get(answer)
        if found is None:
            if len(self._exact_memo) >= self.memo_size:
                self._exact_memo.clear()
            whole = self._lookup.get(label_key(answer))
            parts = [whole] if whole is not None else [self._lookup.get(label_key(p)) for p in split_labels(answer)]
            found = self._exact_memo[answer] = frozenset() if None in parts else frozenset(parts)  # type: ignore[arg-type]
        return found

    def _match(self, answer: str) -> frozenset[str]:
        whole = self._lookup.get(label_key(answer))
        if whole is not None:
            # Whole-answer match first: a synonym may itself contain "and" or a comma.
            return frozenset({whole})
        return frozenset(label for part in split_labels(answer) if (label := self._lookup.get(label_key(part))))


_MATCHERS: dict[tuple[str, ...], LabelMatcher] = {}


def matcher_for(labels: Sequence[str]) -> LabelMatcher:
    """A cached `LabelMatcher` for `labels`: building one per completion would redo its lookup table."""
    key = tuple(labels)
    if key not in _MATCHERS:
        _MATCHERS[key] = LabelMatcher(key)
    return _MATCHERS[key]


def label_set_for(dataset: str | None, reference: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """The candidate labels: the known dataset's label set, else the labels of the reference itself."""
    return label_classes(dataset, [reference])


def parse_prediction(
    text: str, dataset: str | None = None, labels: Sequence[str] | None = None, require_markup: bool = False
) -> frozenset[str]:
    """The labels a free-text prediction names.

    The final \\boxed{} / <answer> is used when present; otherwise the whole text is the answer, unless
    `require_markup` (as for training rewards, where the format is part of the task).
    """
    answer = extract_answer(text)
    if answer is None:
        if require_markup:
            return frozenset()
        answer = text.strip()
    candidates = labels if labels is not None else label_set_for(dataset)
    return matcher_for(candidates).match(answer)


def completion_text(completion: Any) -> str:
    """Text of a TRL completion: a string, or the text of a conversation's last assistant message.

    After TRL's tool loop a conversational completion holds the model's turns interleaved with the
    tools' results, and may end with a tool's message; an assistant turn that only calls tools has no
    content. Its text is "" then, as for a conversation with no assistant turn. Content is a string or
    a list of parts, of which the text parts count.
    """
    if isinstance(completion, str):
        return completion
    message = next((m for m in reversed(completion) if m.get("role", "assistant") == "assistant"), None)
    content = message.get("content") if message is not None else None
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")


class AccuracyReward:
    """1.0 when the answer's label set equals the reference set, else 0.0: an answer cannot game it by listing more.

    The label set of a domain is, in this order: the one declared in `labels` ({domain: [label, ...]}, e.g.
    `FairGRPOConfig.label_sets`), the built-in set of the paper's seven datasets. With a label set, the
    answer's parts are matched through the labels' spellings and synonyms, and a part that names no label
    of the set makes the whole answer invalid (0). Without one, the answer's parts and the reference's
    labels are compared as sets of normalised strings (`label_key`).

    TRL passes every dataset column as a keyword argument: the reference is read from `solution_column`
    and the domain from `domain_column` (``dataset`` by default; None: the one domain ``"all"``).
    Answers that name no valid label score 0 and are counted: in `no_valid_label` over the object's life,
    and per batch through TRL's ``log_metric`` as ``accuracy/no_valid_label_frac``.
    """

    __name__ = "accuracy_reward"

    def __init__(
        self,
        labels: Mapping[str, Sequence[str]] | str | None = None,
        *,
        solution_column: str = "solution",
        domain_column: str | None = DEFAULT_DOMAIN_COLUMN,
    ):
        self.labels = {name: tuple(values) for name, values in (read_label_sets(labels) or {}).items()}
        self.solution_column = solution_column
        self.domain_column = domain_column
        self.scored = 0
        self.no_valid_label = 0

    @classmethod
    def from_config(cls, config: Any) -> AccuracyReward:
        """The reward a `FairGRPOConfig` describes: its label_sets, solution_column and domain_column."""
        return cls(
            config.label_sets,
            solution_column=config.solution_column,
            domain_column=read_domain_column(config.domain_column),
        )

    def label_set(self, domain: Any) -> tuple[str, ...] | None:
        """The labels `domain` may answer: declared, else built in; None when neither knows it."""
        name = _domain_name(domain)
        if name in self.labels:
            return self.labels[name]
        return canonical_labels(name) if name else None

    def __call__(
        self,
        completions: Sequence[Any],
        solution: Sequence[Any] | None = None,
        dataset: Sequence[Any] | None = None,
        **kwargs,
    ) -> list[float]:
        columns = {"solution": solution, "dataset": dataset, **kwargs}
        references = columns.get(self.solution_column)
        if references is None:
            available = sorted(k for k, v in columns.items() if v is not None and k != "log_metric")
            raise ValueError(
                f"accuracy_reward reads the reference labels from column {self.solution_column!r}, which the batch "
                f"lacks; its columns: {available}. Set FairGRPOConfig.solution_column (or "
                "AccuracyReward(solution_column=...)) to the column holding them"
            )
        domains = columns.get(self.domain_column) if self.domain_column else None
        if domains is None:
            domains = [ALL_DOMAINS if self.domain_column is None else None] * len(completions)
        rewards, invalid = [], 0
        for completion, reference, domain in zip(completions, references, domains, strict=True):
            answer = extract_answer(completion_text(completion))
            labels = self.label_set(domain)
            if labels is not None:
                matcher = matcher_for(labels)
                predicted = matcher.match_exact(answer) if answer else frozenset()
                truth = matcher.match(_reference_text(reference))
            else:
                predicted = frozenset(label_key(p) for p in split_labels(answer)) if answer else frozenset()
                truth = frozenset(label_key(r) for r in to_label_set(_reference_text(reference)))
                if answer and len(truth) == 1 and label_key(answer) in truth:
                    predicted = truth  # a label that itself contains a separator ("Benign and stable")
            invalid += not predicted
            rewards.append(1.0 if predicted and predicted == truth else 0.0)
        self.scored += len(rewards)
        self.no_valid_label += invalid
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and rewards:
            log_metric("accuracy/no_valid_label_frac", invalid / len(rewards))
        return rewards


def _domain_name(domain: Any) -> str | None:
    """A domain value as the label sets are keyed: stripped text (an integer domain column works too)."""
    if domain is None:
        return None
    text = domain.decode("utf-8", errors="replace") if isinstance(domain, bytes) else str(domain)
    return text.strip() or None


def _reference_text(reference: Any) -> str:
    # Labels stored as numbers (a 0/1 column) are compared as their text; a missing one (None, NaN)
    # names no label, so it scores 0 like any unmatched reference.
    if reference is None or (isinstance(reference, float) and math.isnan(reference)):
        return ""
    if isinstance(reference, str):
        return reference
    if isinstance(reference, (list, tuple)):
        return ", ".join(str(r) for r in reference if r is not None)
    return str(reference)


def with_config_label_sets(reward_funcs: Any, config: Any) -> Any:
    """`reward_funcs` with the shared `accuracy_reward` replaced by `AccuracyReward.from_config(config)`.

    So a config's label_sets, solution_column and domain_column reach the reward a user passed by name;
    an `AccuracyReward` built by the user is kept as it is.
    """
    wanted = (config.label_sets, config.solution_column, read_domain_column(config.domain_column))
    if wanted == (None, "solution", DEFAULT_DOMAIN_COLUMN):
        return reward_funcs

    def bound(func: Any) -> Any:
        return AccuracyReward.from_config(config) if func is accuracy_reward else func

    if isinstance(reward_funcs, list | tuple):
        return type(reward_funcs)(bound(f) for f in reward_funcs)
    return bound(reward_funcs)


accuracy_reward = AccuracyReward()


def format_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """1.0 when the completion reasons in <think> </think> and then answers in \\boxed{}, else 0.0."""
    return [1.0 if _FORMAT.match(completion_text(c)) else 0.0 for c in completions]
