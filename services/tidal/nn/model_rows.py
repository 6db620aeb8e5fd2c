"""Functions over a whole model's `ShardedEmbedding` layers: which tables it reads, binding them
to a row source, and collecting one step's row gradients and id statistics per table.

A table may be read by several layers (the same ``name``) or by one layer called several times
in a step: its gradient still comes out as one `RowGradient` per table, summed per unique id.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from tidal.nn.embedding import Pulled, ShardedEmbedding
from tidal.nn.rows import RowGradient, RowSource, RowStats

__all__ = ["bind_rows", "embedding_tables", "reset_rows", "row_gradients", "row_stats"]


def _layers(model: nn.Module) -> Iterator[ShardedEmbedding]:
    for module in model.modules():  # a shared module is listed once
        if isinstance(module, ShardedEmbedding):
            yield module


def embedding_tables(model: nn.Module) -> dict[str, int]:
    """Table name -> row width of every table ``model`` reads (empty: none). Two layers that name
    one table with different widths are refused (ValueError naming both)."""
    tables: dict[str, int] = {}
    for layer in _layers(model):
        if tables.setdefault(layer.name, layer.dim) != layer.dim:
            raise ValueError(
                f"embedding table {layer.name!r} is read with dim {tables[layer.name]} and with dim {layer.dim}"
            )
    return dict(sorted(tables.items()))


def bind_rows(model: nn.Module, source: RowSource | None) -> dict[str, int]:
    """Points every `ShardedEmbedding` of ``model`` at ``source`` (None: unbinds); returns the
    tables they read (`embedding_tables`)."""
    tables = embedding_tables(model)
    for layer in _layers(model):
        layer.bind(source)
    return tables


def _by_table(model: nn.Module, take: bool) -> dict[str, tuple[int, list[Pulled]]]:
    found: dict[str, tuple[int, list[Pulled]]] = {}
    for layer in _layers(model):
        pulled = layer.take_pulled() if take else layer.pending()
        if pulled:
            found.setdefault(layer.name, (layer.dim, []))[1].extend(pulled)
    return found


def row_gradients(model: nn.Module) -> list[RowGradient]:
    """After backward: per table read in this step (by name), its unique ids and their gradient
    rows summed per id, on the CPU; then forgets the step. A row whose output did not reach the
    loss has a zero gradient. Tables no forward read (or only empty batches) are left out."""
    out: list[RowGradient] = []
    for table, (dim, pulled) in sorted(_by_table(model, take=True).items()):
        ids = torch.cat([p.ids for p in pulled])
        grads = torch.cat([
            p.rows.grad.detach().cpu() if p.rows.grad is not None else torch.zeros(len(p.ids), dim) for p in pulled
        ])  # fmt: skip
        unique, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        summed = torch.zeros(len(unique), dim, dtype=torch.float32).index_add_(0, inverse, grads.float())
        out.append(RowGradient(table, unique, summed))
    return out


def row_stats(model: nn.Module) -> dict[str, RowStats]:
    """This step's ids per table so far (call before `row_gradients`, which forgets them)."""
    stats: dict[str, RowStats] = {}
    for table, (_, pulled) in sorted(_by_table(model, take=False).items()):
        unique = torch.unique(torch.cat([p.ids for p in pulled])).numel()
        stats[table] = RowStats(table, sum(p.seen for p in pulled), unique)
    return stats


def reset_rows(model: nn.Module) -> None:
    """Forgets this step's pulls (e.g. after a step that failed before backward)."""
    for layer in _layers(model):
        layer.take_pulled()
