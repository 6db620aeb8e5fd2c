"""What the sparse layer and a parameter shard exchange: rows pulled by id, gradients pushed by id.

`RowSource` is the one thing `ShardedEmbedding` needs from the outside world: the gRPC client
that reads a job's embedding tables from the parameter shards implements it, and so does the
in-process `LocalRows` (single-process reference, tests). Nothing here knows about the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = ["RowGradient", "RowSource", "RowStats"]


@runtime_checkable
class RowSource(Protocol):
    """Where a job's embedding rows live."""

    def pull(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """ids: int64, 1-D, unique. Returns float32 rows, shape (len(ids), dim), in the order of ids."""
        ...


@dataclass(frozen=True)
class RowGradient:
    """One table's gradient of one step: the unique ids (int64, 1-D, ascending) and the gradient
    rows summed per id (float32, shape (len(ids), dim)), both on the CPU."""

    table: str
    ids: torch.Tensor
    grad: torch.Tensor


@dataclass(frozen=True)
class RowStats:
    """One table's ids of one step, for the metrics: every id the model read (``seen``, with
    repeats) and the distinct ones (``unique``, what was pulled and what is pushed)."""

    table: str
    seen: int
    unique: int

    @property
    def unique_ratio(self) -> float:
        """unique / seen: how much deduplication saved (1.0: nothing repeated; 0.0: no ids)."""
        return self.unique / self.seen if self.seen else 0.0
