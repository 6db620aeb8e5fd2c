"""Incremental row checkpoints: a chain of one full snapshot and the deltas after it.

A delta snapshot (`RowTable.snapshot(delta=True)`) holds, per table, the rows created or
updated by a push since the previous snapshot, with the same tensors as a full one, plus
`deleted`: the ids evicted since (or created and evicted in between). `merge` applies one
delta to the tensors of a full snapshot and gives the tensors a full snapshot taken at the
delta's time would have held: the same ids, values, optimizer state and per-row steps.

Last use (`last_used`, the ranks that order eviction): rows of the base that the delta does
not hold keep their order, and come before every row it holds (those were pushed after the
base was taken). A row only pulled since the base (an evaluation's read: a training step
pushes every row it pulls) keeps its older place, so after a restore it may be evicted a
little earlier than it would have been.

A full snapshot is taken every `DELTAS_PER_FULL` deltas, so a restore reads at most one full
file and that many deltas, and a chain's files can be pruned once no kept checkpoint names them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from tidal.core.embeddings.table import DELETED, IDS, LAST_USED
from tidal.core.errors import DataLossError

FULL, DELTA = "full", "delta"
# Deltas between two full snapshots: a restore reads at most 1 + DELTAS_PER_FULL files.
DELTAS_PER_FULL = 8


def table_tensors(tensors: dict[str, torch.Tensor], table: str) -> dict[str, torch.Tensor]:
    """The tensors `<table>/<key>` of one table, by key."""
    prefix = f"{table}/"
    return {k.removeprefix(prefix): t for k, t in tensors.items() if k.startswith(prefix)}


def merge(
    base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor], tables: Iterable[str], where: str
) -> dict[str, torch.Tensor]:
    """The full tensors after applying `delta` to `base` (a full snapshot's tensors, or an
    earlier merge), for every table in `tables`; DataLossError naming `where` if they do not fit."""
    merged: dict[str, torch.Tensor] = {}
    for name in tables:
        old, new = table_tensors(base, name), table_tensors(delta, name)
        deleted = new.pop(DELETED, None)
        if deleted is None or deleted.dtype != torch.int64 or deleted.dim() != 1:
            raise DataLossError(f"{where}: table {name!r} has no 1-D int64 {name}/{DELETED} tensor")
        if set(new) != set(old) or IDS not in old:
            raise DataLossError(f"{where}: table {name!r} has tensors {sorted(new)}, its base {sorted(old)}")
        kept = ~torch.isin(old[IDS], torch.cat([new[IDS], deleted]))
        count = int(kept.sum())
        try:
            for key, tensor in old.items():
                if key == LAST_USED:
                    ranks = torch.argsort(torch.argsort(tensor[kept]))
                    merged[f"{name}/{key}"] = torch.cat([ranks, new[key].to(torch.int64) + count])
                else:
                    merged[f"{name}/{key}"] = torch.cat([tensor[kept], new[key].to(tensor.dtype)])
        except (RuntimeError, IndexError) as exc:
            raise DataLossError(f"{where}: table {name!r} does not fit its base ({exc})") from None
    return merged
