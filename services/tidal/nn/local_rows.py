"""`LocalRows`: embedding tables held in this process, updated by plain row-wise SGD.

The single-process reference for sparse training (what distributed runs are checked against)
and a `RowSource` for tests. Tables are dense tensors here, so keep them to what fits in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from tidal.nn.rows import RowGradient

__all__ = ["LocalRows"]


class LocalRows:
    """``tables``: name -> (rows, dim). Rows start as N(0, ``init_std``²) drawn with ``seed``
    (tables in name order), and `apply` moves each pushed row by ``-lr * grad``."""

    def __init__(self, tables: Mapping[str, tuple[int, int]], lr: float, seed: int = 0, init_std: float = 0.01):
        if not lr > 0:
            raise ValueError(f"LocalRows: lr must be positive, got {lr!r}")
        generator = torch.Generator().manual_seed(seed)
        self.lr = lr
        self.tables: dict[str, torch.Tensor] = {}
        for name, (rows, dim) in sorted(tables.items()):
            if rows < 1 or dim < 1:
                raise ValueError(f"LocalRows: table {name!r} needs rows and dim >= 1, got ({rows}, {dim})")
            self.tables[name] = torch.randn(rows, dim, generator=generator) * init_std
        self.pulls = 0  # calls to pull, to check one pull per table per forward

    def _table(self, table: str) -> torch.Tensor:
        if table not in self.tables:
            raise KeyError(f"LocalRows: no table {table!r} (tables: {sorted(self.tables)})")
        return self.tables[table]

    def pull(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        rows = self._table(table)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(rows)):
            raise IndexError(f"LocalRows: table {table!r} has rows [0, {len(rows)}), asked for ids outside it")
        self.pulls += 1
        return rows[ids]  # a copy: the caller's leaf never aliases the table

    def apply(self, grads: Iterable[RowGradient]) -> None:
        """One SGD step on the pushed rows (ids unique per gradient, as `row_gradients` gives)."""
        for g in grads:
            self._table(g.table).index_add_(0, g.ids, g.grad, alpha=-self.lr)
