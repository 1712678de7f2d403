"""GRPO + Resampling (Puyol-Antón et al., 2021): draw prompts so every (domain, group) is equally frequent.

Each row is drawn with probability proportional to ``1 / count(domain, group)``, with replacement, so
in expectation every (domain, group) cell supplies the same number of prompts per epoch. Rows with no
demographics form their domain's "unknown" cell. The draw keeps TRL's `RepeatSampler` layout (each
prompt repeated `num_generations` times, chunks repeated for `steps_per_generation`), and all
processes draw the same indices from the same seed.

Both samplers here know their epoch (`set_epoch`): epoch e's order is the (e + 1)-th draw from the
seed, exactly what an unbroken run draws, so a run resumed in a later epoch sees the same prompts as
the run it continues. TRL's `RepeatSampler` draws from a generator that only a whole run advances.
`GuidedRepeatSampler` draws each generation batch by FairGRPO's weights of the moment
(`fair_trl.guided_sampling`). `train_sampler` builds the one a config asks for.
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import IterableDataset as StreamingDataset
from trl.trainer.utils import RepeatSampler

from fair_trl.groups import GroupKeyer, domain_key

__all__ = [
    "BalancedRepeatSampler",
    "EpochRepeatSampler",
    "GuidedRepeatSampler",
    "balanced_weights",
    "check_sampling",
    "column_weights",
    "row_cells",
    "train_sampler",
]


def balanced_weights(domains: Sequence[str], groups: Sequence[str | None]) -> np.ndarray:
    """Per-row sampling probabilities: ``1 / count`` of the row's (domain, group) cell, normalised."""
    if len(domains) != len(groups):
        raise ValueError(f"domains ({len(domains)}) and groups ({len(groups)}) must have the same length")
    if not domains:
        raise ValueError("no rows to sample from")
    cells = list(zip(domains, groups, strict=True))
    counts = Counter(cells)
    weights = np.array([1.0 / counts[cell] for cell in cells])
    return weights / weights.sum()


def column_weights(dataset, column: str) -> np.ndarray:
    """Sampling probabilities proportional to a dataset column of non-negative finite weights."""
    if column not in dataset.column_names:
        raise ValueError(f"sampling_weight_column {column!r} is not a dataset column; columns: {dataset.column_names}")
    values = dataset[column]
    for row, value in enumerate(values):
        if value is not None and not isinstance(value, numbers.Real):
            raise ValueError(
                f"sampling_weight_column {column!r} must hold numbers; row {row} has {value!r} ({type(value).__name__})"
            )
    weights = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise ValueError(
            f"sampling_weight_column {column!r} must hold finite weights >= 0; row {bad[0]} has {weights[bad[0]]}"
        )
    if weights.sum() <= 0:
        raise ValueError(f"sampling_weight_column {column!r} has no positive weight")
    return weights / weights.sum()


class EpochRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler`, same order epoch for epoch, whose `set_epoch(e)` puts it at epoch e's order."""

    def _draw(self) -> list[int]:
        return torch.randperm(self.num_samples, generator=self.generator).tolist()

    def _repeated(self, chunk: list[int]):
        """One generation batch's prompts in TRL's layout: the chunk `repeat_count` times, each prompt
        `mini_repeat_count` times in a row."""
        for _ in range(self.repeat_count):
            for index in chunk:
                for _ in range(self.mini_repeat_count):
                    yield index

    def set_epoch(self, epoch: int) -> None:
        generator = getattr(self, "generator", None)
        if generator is None or self.seed is None:  # unshuffled, or unseeded: nothing to replay
            return
        generator.manual_seed(self.seed)
        # Replay the earlier epochs' draws rather than reseed per epoch, so an unbroken run keeps
        # TRL's own order; one draw per epoch is a small cost beside an epoch of generation.
        for _ in range(epoch):
            self._draw()


class BalancedRepeatSampler(EpochRepeatSampler):
    """TRL's `RepeatSampler`, with each epoch's rows drawn by `weights` (with replacement), coupled to TRL's order.

    The draw is a maximal coupling with the unweighted shuffle of the same seed: at each position the row
    TRL would draw there is kept with probability ``min(1, w / (1/n))``, and otherwise replaced by a row
    drawn from what ``w`` has beyond ``1/n``. Each position still draws row i with probability ``w_i``
    exactly, while a weighted run shares as many prompts, at the same steps, with the unweighted run of
    its seed as the weights allow; so comparing the two measures the weighting, not two unrelated orders.
    """

    def __init__(self, weights: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        if len(weights) != self.num_samples:
            raise ValueError(f"weights has {len(weights)} entries for a dataset of {self.num_samples} rows")
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.weights = self.weights / self.weights.sum()
        # Drawn even when TRL would not shuffle: a weighted draw is the point of this sampler. The
        # replacements come from a second generator, so the first advances exactly as TRL's does.
        self.generator = torch.Generator()
        self.replacements = torch.Generator()
        if self.seed is not None:
            self.generator.manual_seed(self.seed)
            self.replacements.manual_seed(self.seed + 1)

    def set_epoch(self, epoch: int) -> None:
        if self.seed is not None:
            self.replacements.manual_seed(self.seed + 1)
        super().set_epoch(epoch)

    def _draw(self) -> list[int]:
        n = self.num_samples
        order = super()._draw()
        keep = torch.clamp(self.weights[order] * n, max=1.0)
        kept = torch.rand(n, generator=self.replacements, dtype=torch.double) < keep
        excess = torch.clamp(self.weights - 1.0 / n, min=0.0)
        if excess.sum() <= 0:  # uniform weights: TRL's own order
            return order
        others = torch.multinomial(excess, n, replacement=True, generator=self.replacements)
        return torch.where(kept, torch.as_tensor(order), others).tolist()

    def __iter__(self):
        indexes = self._draw()
        chunks = [indexes[i : i + self.batch_size] for i in range(0, len(indexes), self.batch_size)]
        for chunk in chunks:
            if len(chunk) < self.batch_size:
                continue
            yield from self._repeated(chunk)


class GuidedRepeatSampler(EpochRepeatSampler):
    """TRL's `RepeatSampler` layout, each generation batch's prompts drawn by the weights of the moment.

    `guided` (`fair_trl.guided_sampling.GuidedSampling`) gives generation batch j's weight of each
    (domain, group) cell, or None before any statistics: the batch is then TRL's order of the seed.
    Otherwise its prompts are drawn with replacement, each row with probability proportional to its
    cell's weight, by a generator seeded from (seed, j): a draw depends on the batch, not on the draws
    before it, so a resumed run draws what the unbroken run did. j counts the run's generation batches
    across epochs. `cells`: each row's (domain, group).
    """

    def __init__(self, guided: Any, cells: Sequence[tuple[str, str | None]], **kwargs):
        super().__init__(**kwargs)
        if len(cells) != self.num_samples:
            raise ValueError(f"cells has {len(cells)} entries for a dataset of {self.num_samples} rows")
        self.guided = guided
        self.distinct_cells: list[tuple[str, str | None]] = list(dict.fromkeys(cells))
        position = {cell: i for i, cell in enumerate(self.distinct_cells)}
        self.cell_of_row = np.array([position[cell] for cell in cells], dtype=np.intp)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.epoch = epoch

    def __iter__(self):
        order = self._draw() if self.shuffle else list(range(self.num_samples))
        epoch, self.epoch = self.epoch, self.epoch + 1  # a run that never sets the epoch still counts them
        per_epoch = self.num_samples // self.batch_size
        for i in range(per_epoch):
            chunk = self.draw_batch(epoch * per_epoch + i, order[i * self.batch_size : (i + 1) * self.batch_size])
            yield from self._repeated(chunk)

    def draw_batch(self, batch: int, trl_order: list[int]) -> list[int]:
        """Generation batch `batch`'s prompts: drawn by the weights `guided` has for it now, else `trl_order`."""
        weights = self.guided.weights_for(batch, self.distinct_cells)
        if weights is None:
            return trl_order
        p = weights[self.cell_of_row]
        rng = np.random.default_rng(None if self.seed is None else [self.seed, batch])
        return rng.choice(self.num_samples, size=self.batch_size, replace=True, p=p / p.sum()).tolist()


def train_sampler(
    dataset: Any,
    config: Any,
    num_generations: int,
    num_iterations: int,
    shuffle: bool,
    keyer: GroupKeyer,
    guided: Any = None,
) -> EpochRepeatSampler:
    """The train sampler `config` (a `FairGRPOConfig`) asks for, in TRL's `RepeatSampler` layout.

    Guided by FairGRPO's weights (`guided`: the trainer's `GuidedSampling`), balanced by (domain, group) cell
    (`keyer` keys the rows), weighted by `sampling_weight_column`, or else
    TRL's own sampler as TRL builds it (`shuffle`: TRL's `shuffle_dataset`), but one that can be put at any
    epoch's order.
    """
    layout = {
        "data_source": dataset,
        "mini_repeat_count": num_generations,
        "batch_size": config.generation_batch_size // num_generations,
        "repeat_count": num_iterations * config.steps_per_generation,
        # transformers' `data_seed` ("the seed of data samplers"), else `seed`: with both set, a run can
        # keep its prompt order and change only its sampling of completions.
        "seed": config.seed if config.data_seed is None else config.data_seed,
    }
    if config.guided_sampling:
        return GuidedRepeatSampler(guided, row_cells(dataset, config, keyer), **layout, shuffle=shuffle)
    if not (config.balanced_sampling or config.sampling_weight_column):
        return EpochRepeatSampler(**layout, shuffle=shuffle)
    if config.sampling_weight_column:
        weights = column_weights(dataset, config.sampling_weight_column)
    else:
        cells = row_cells(dataset, config, keyer)
        weights = balanced_weights([domain for domain, _ in cells], [group for _, group in cells])
    return BalancedRepeatSampler(weights, **layout, shuffle=True)


def row_cells(dataset: Any, config: Any, keyer: GroupKeyer) -> list[tuple[str, str | None]]:
    """Each row's (domain, group key), as training keys them; `keyer` is the trainer's (its counts are left alone)."""
    # Only the metadata columns: images are never decoded to compute the weights.
    columns = [c for c in [config.domain_column, *config.demographic_columns] if c]
    # No domain or demographic column (data without them): one cell, every row drawn alike.
    rows = dataset.select_columns(columns).to_list() if columns else [{}] * len(dataset)
    domains = [domain_key(r, config.domain_column) for r in rows]
    # A sibling keys the rows: the estimator's keyer counts missing and invalid values as training meets them.
    return list(zip(domains, keyer.sibling().keys(rows, domains), strict=True))


def check_sampling(dataset: Any, config: Any) -> None:
    """A sampler setting needs a dataset transformers draws with a sampler: refuse it for a stream."""
    settings = config.sampler_settings()
    if settings and isinstance(dataset, (torch.utils.data.IterableDataset, StreamingDataset)):
        raise ValueError(
            f"{settings[0]} needs a map-style train_dataset, got {type(dataset).__name__}: transformers draws an "
            "iterable dataset in stream order and never asks for a sampler, so the setting would be ignored. Load "
            "the data as a datasets.Dataset (no streaming), or unset it and weight the stream yourself"
        )
