"""The trainer's fairness log of its rollouts: what it keeps between logs, per mode, and what it last scored.

Training rollouts are kept on each process and gathered when a log is due (every `fairness_logging_steps`);
evaluation rollouts are gathered batch by batch, so the copies accelerate pads the last batches with can be
cut off. The scoring itself is `fair_trl.rollout_fairness`.
"""

from __future__ import annotations

from typing import Any

from accelerate.utils import gather_object

from fair_trl.groups import GroupKeyer, domain_key
from fair_trl.rewards import completion_text, extract_answer
from fair_trl.rollout_fairness import Rollout, fairness_results, flatten_results

__all__ = ["RolloutFairnessLog"]


class RolloutFairnessLog:
    """Rollouts scored since the last fairness log, per mode ("train", "eval"), and the latest results.

    `config`: the run's `FairGRPOConfig` (its demographic, domain and solution columns and
    `fairness_logging_steps`). `keyer`: the estimator's group keyer; the log keys with a sibling of its
    own, which keeps the estimator's missing/invalid counts from being counted twice and shares its warnings.
    """

    def __init__(self, config: Any, keyer: GroupKeyer):
        self.config = config
        self.keyer = keyer.sibling()
        self.rollouts: dict[str, list[Rollout]] = {"train": [], "eval": []}
        # The latest full `compute_fairness` output per attribute, per mode (e.g. for a model card).
        self.results: dict[str, dict[str, Any]] = {"train": {}, "eval": {}}
        # Evaluation rollouts gathered so far in this evaluation and how many the eval sampler really holds.
        self._eval_position = 0
        self._eval_total: int | None = None
        self._logged_step = -1

    def record(self, mode: str, inputs: list[dict[str, Any]], completions: list[Any]) -> None:
        """Keep a `Rollout` of each of this process's completions (an evaluation batch: every process's)."""
        config = self.config
        if not config.demographic_columns or (mode == "train" and config.fairness_logging_steps <= 0):
            return  # nothing would ever log (and clear) the buffer
        rollouts = [self._rollout(row, completion) for row, completion in zip(inputs, completions, strict=True)]
        if mode == "eval":
            # Gathered batch by batch, in the eval sampler's order: with several processes accelerate pads the
            # last batches with copies of the first rows (even_batches), and those come after every real row.
            rollouts = gather_object(rollouts)
            start, self._eval_position = self._eval_position, self._eval_position + len(rollouts)
            if self._eval_total is not None:
                rollouts = rollouts[: max(self._eval_total - start, 0)]
        self.rollouts[mode].extend(r for r in rollouts if r is not None)

    def _rollout(self, row: dict[str, Any], completion: Any) -> Rollout | None:
        reference = row.get(self.config.solution_column)
        if reference is None:
            return None
        groups = {c: self.keyer.attribute(c, row.get(c)) for c in self.config.demographic_columns}
        answer = extract_answer(completion_text(completion))
        return Rollout(answer, str(reference), domain_key(row, self.config.domain_column), groups)

    def start_eval(self, dataloader: Any) -> None:
        """An evaluation over `dataloader` begins: its rollouts are counted from the first."""
        self._eval_position = 0
        self._eval_total = _sampler_length(dataloader)

    def clear(self, mode: str) -> None:
        self.rollouts[mode] = []

    def due(self, step: int) -> bool:
        """Whether the training log is due at `step`, a multiple of `fairness_logging_steps`.

        True once per step: transformers asks again at an epoch's end, at the same step.
        """
        steps = self.config.fairness_logging_steps
        if steps > 0 and self.config.demographic_columns and step % steps == 0 and step != self._logged_step:
            self._logged_step = step
            return True
        return False

    def logs(self, mode: str) -> dict[str, float]:
        """The fairness metrics of every process's rollouts since the last call; clears the buffer.

        Every process must call it: training rollouts are gathered here (evaluation ones already were).
        """
        rollouts = self.rollouts[mode] if mode == "eval" else gather_object(self.rollouts[mode])
        self.clear(mode)
        results = fairness_results(rollouts, self.config.demographic_columns)
        if results:
            self.results[mode] = results
        return flatten_results(results)


def _sampler_length(dataloader: Any) -> int | None:
    """Samples in a (possibly accelerate-wrapped) dataloader's sampler, without padding; None if unknown."""
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    while batch_sampler is not None and not hasattr(batch_sampler, "sampler"):
        batch_sampler = getattr(batch_sampler, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None)
    try:
        return len(sampler)
    except TypeError:  # an iterable dataset's sampler has no length
        return None
