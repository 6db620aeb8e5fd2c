"""Reading batches from a split: a worker's training batch of a step, and validation batches.

A map-style training split is read through ``batch_indices``: the batch of a step is a pure
function of (partition, batch size, step, seed, rank), whoever computes it. A stream (an
``IterableDataset``) is read in order: batch ``step`` is its ``step``-th run of ``batch_size``
samples, wrapping to a fresh pass at its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset

from tidal.core.datasets import batch_indices
from tidal.core.errors import InvalidArgumentError
from tidal.core.sources.api import Split
from tidal.core.sources.checks import as_batch, check_batch
from tidal.core.sources.job_data import JobData, SampleSpec

__all__ = ["TrainBatches", "eval_batches", "fetch", "is_stream"]

EVAL_BATCH = 4096  # validation samples per forward pass


def is_stream(split: Split) -> bool:
    return isinstance(split, IterableDataset)


def fetch(split: Any, indices: torch.Tensor, spec: SampleSpec, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked batch of samples ``indices`` of a map-style split."""
    if hasattr(split, "__getitems__"):
        out = split.__getitems__(indices.tolist())
    else:
        out = [split[i] for i in indices.tolist()]
    x, y = as_batch(out, len(indices), where)
    return check_batch(x, y, spec, where, indices)


def _stream_batches(split: Any, size: int, spec: SampleSpec, where: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``size`` samples of one pass over a stream; the last may be shorter."""
    pending: list[Any] = []
    for sample in split:
        pending.append(sample)
        if len(pending) == size:
            yield check_batch(*as_batch(pending, size, where), spec, where)
            pending = []
    if pending:
        yield check_batch(*as_batch(pending, len(pending), where), spec, where)


def eval_batches(data: JobData, batch_size: int = EVAL_BATCH) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The validation split in order, ``batch_size`` samples at a time."""
    where = f"dataset.name {data.name!r}: validation"
    if is_stream(data.val):
        yield from _stream_batches(data.val, batch_size, data.val_spec, where)
        return
    total = len(data.val)
    for lo in range(0, total, batch_size):
        yield fetch(data.val, torch.arange(lo, min(lo + batch_size, total)), data.val_spec, where)


class TrainBatches:
    """``batches(step)``: the training batch of ``step`` for the worker owning ``partition``
    (None for a stream). Called from one thread at a time (the prefetcher's)."""

    def __init__(self, data: JobData, partition: torch.Tensor | None, batch_size: int, seed: int, rank: int) -> None:
        self.data, self.partition = data, partition
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self._stream: Iterator[Any] | None = None
        self._next_step = 0
        if is_stream(data.train) != (partition is None):
            raise ValueError("a partition is given for map-style training data, and only for it")

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        where = f"dataset.name {self.data.name!r}: training batch of step {step}"
        if self.partition is None:
            return self._from_stream(step, where)
        idx = batch_indices(self.partition, self.batch_size, step, self.seed, self.rank)
        return fetch(self.data.train, idx, self.data.train_spec, where)

    def _samples(self) -> Iterator[Any]:
        # Passes over the stream one after the other, so every batch is full.
        while True:
            empty = True
            for sample in self.data.train:
                empty = False
                yield sample
            if empty:
                raise InvalidArgumentError(f"dataset.name {self.data.name!r}: the training stream is empty")

    def _from_stream(self, step: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stream is None or step != self._next_step:
            # Out of order (a restart): replay the stream from its start up to this step.
            self._stream = self._samples()
            for _ in range(step * self.batch_size):
                next(self._stream)
        samples = [next(self._stream) for _ in range(self.batch_size)]
        self._next_step = step + 1
        return check_batch(*as_batch(samples, self.batch_size, where), self.data.train_spec, where)
