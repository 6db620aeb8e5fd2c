"""A row's initial values, a function of (job seed, table, id, column) alone.

Rows are created when first pushed, on whichever shard holds them, and may be evicted and
created again: drawing them from a counter-based hash (not a generator's stream) gives the
same values on any shard, at any time, in any order, after any restart. Uniforms come from
53 bits of splitmix64 outputs; normals from two uniforms by Box-Muller.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tidal.core.embeddings.hashing import GOLDEN, as_uint64, mix64, name_key
from tidal.core.spec import RowInitSpec


def _uniform(seed: int, table: str, ids: np.ndarray, dim: int, stream: int) -> np.ndarray:
    """Uniform float64 in (0, 1), shape (len(ids), dim)."""
    key = name_key("init", seed, table, stream)
    row_keys = mix64(as_uint64(ids) ^ key)
    columns = np.arange(dim, dtype=np.uint64) * GOLDEN
    bits = mix64(row_keys[:, None] ^ mix64(columns)[None, :]) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def initial_rows(seed: int, table: str, ids: torch.Tensor, dim: int, spec: RowInitSpec) -> torch.Tensor:
    """The initial values of rows `ids` (1-D int64) of `table`: float32, (len(ids), dim)."""
    array = ids.cpu().numpy()
    if spec.distribution == "zeros" or spec.scale == 0 or len(array) == 0:
        return torch.zeros((len(array), dim), dtype=torch.float32)
    if spec.distribution == "uniform":
        values = (2.0 * _uniform(seed, table, array, dim, 0) - 1.0) * spec.scale
    else:
        u1, u2 = _uniform(seed, table, array, dim, 1), _uniform(seed, table, array, dim, 2)
        values = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2) * spec.scale
    return torch.from_numpy(values.astype(np.float32))
