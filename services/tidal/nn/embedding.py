"""`ShardedEmbedding`: an embedding table that lives on the parameter shards, not in the model.

A forward pulls only the distinct ids of its input from the bound `RowSource` (one call per
forward), makes those rows a leaf tensor that requires grad and gathers the output from them.
Backward then leaves the gradient of exactly the pulled rows on that leaf; `model_rows.py`
collects them per table after the step. The module has no parameters: the dense network's
parameter server never sees the tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tidal.nn.rows import RowSource

__all__ = ["ShardedEmbedding"]


@dataclass(frozen=True)
class Pulled:
    """One forward's pull: the unique ids, the rows' leaf tensor, and how many ids were read."""

    ids: torch.Tensor
    rows: torch.Tensor
    seen: int


class ShardedEmbedding(nn.Module):
    """Reads rows of table ``name`` (``dim`` floats each) by id. ``forward(ids)``: any integer
    tensor of ids -> float32 of shape ``(*ids.shape, dim)``."""

    def __init__(self, name: str, dim: int) -> None:
        super().__init__()
        if not isinstance(name, str) or not name:
            raise ValueError(f"ShardedEmbedding: the table name must be a non-empty string, got {name!r}")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"ShardedEmbedding {name!r}: dim must be a positive integer, got {dim!r}")
        self.name, self.dim = name, dim
        self._source: RowSource | None = None
        # This step's pulls (forwards under grad only), until row_gradients takes them.
        self._pulled: list[Pulled] = []

    def extra_repr(self) -> str:
        return f"{self.name!r}, dim={self.dim}"

    def bind(self, source: RowSource | None) -> None:
        """Reads rows from ``source`` from now on (None: unbound)."""
        if source is not None and not callable(getattr(source, "pull", None)):
            raise TypeError(f"ShardedEmbedding {self.name!r}: a row source needs a pull(table, ids) method")
        self._source = source

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"ShardedEmbedding {self.name!r}: ids must be an integer tensor, got {ids.dtype}")
        if self._source is None:
            raise RuntimeError(
                f"ShardedEmbedding {self.name!r}: no row source is bound (call tidal.nn.bind_rows(model, source))"
            )
        flat = ids.reshape(-1).to(torch.int64)
        unique, inverse = torch.unique(flat, sorted=True, return_inverse=True)
        rows = self._pull(unique.cpu()).to(ids.device)
        if torch.is_grad_enabled() and len(unique):
            # A fresh leaf: its .grad after backward is the gradient of exactly these rows.
            rows = rows.detach().requires_grad_(True)
            self._pulled.append(Pulled(unique.cpu(), rows, flat.numel()))
        return F.embedding(inverse, rows).reshape(*ids.shape, self.dim)

    def _pull(self, unique: torch.Tensor) -> torch.Tensor:
        if len(unique) == 0:
            return torch.zeros(0, self.dim)  # an empty batch needs no round trip
        assert self._source is not None
        rows = self._source.pull(self.name, unique)
        if not isinstance(rows, torch.Tensor) or tuple(rows.shape) != (len(unique), self.dim):
            got = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
            raise RuntimeError(
                f"ShardedEmbedding {self.name!r}: the row source returned {got} for {len(unique)} ids, "
                f"expected ({len(unique)}, {self.dim})"
            )
        return rows.to(torch.float32)

    def take_pulled(self) -> list[Pulled]:
        """This step's pulls, and forget them."""
        pulled, self._pulled = self._pulled, []
        return pulled

    def pending(self) -> list[Pulled]:
        """This step's pulls so far (not forgotten)."""
        return list(self._pulled)
