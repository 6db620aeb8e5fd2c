"""Which shard holds a row: a stable hash of (table, id), the same on every worker and shard.

Ids are spread by hashing, not by range, so a table of consecutive ids, or of a few hot ids
in one range, still gives every shard its share; each table is salted by its name so two
tables' hot ids do not land on the same shard.
"""

from __future__ import annotations

import numpy as np
import torch

from tidal.core.embeddings.hashing import as_uint64, mix64, name_key


def shard_of(table: str, ids: torch.Tensor, num_shards: int) -> torch.Tensor:
    """The shard index (int64, in [0, num_shards)) of each id of `table`; `ids` is 1-D int64."""
    if num_shards < 1:
        raise ValueError(f"num_shards: must be >= 1, got {num_shards}")
    if ids.dtype != torch.int64 or ids.dim() != 1:
        raise ValueError(f"ids: expected a 1-D int64 tensor, got {ids.dtype} of shape {tuple(ids.shape)}")
    if num_shards == 1:
        return torch.zeros_like(ids)
    hashed = mix64(as_uint64(ids.cpu().numpy()) ^ name_key("route", table))
    return torch.from_numpy((hashed % np.uint64(num_shards)).astype(np.int64))


def split_by_shard(table: str, ids: torch.Tensor, num_shards: int) -> list[torch.Tensor]:
    """For each shard, the positions in `ids` of the ids it holds (in their order in `ids`)."""
    shards = shard_of(table, ids, num_shards)
    return [torch.nonzero(shards == s, as_tuple=True)[0] for s in range(num_shards)]
