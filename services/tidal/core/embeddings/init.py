"""A row's initial values, a function of (job seed, table, id, column) alone.

Rows are created when first pushed, on whichever shard holds them, and may be evicted and
created again: drawing them from a counter-based hash (not a generator's stream) gives the
same values on any shard, at any time, in any order, after any restart. Each element is one
splitmix64 output: its high 32 bits make a uniform, and a normal takes both halves (Box-Muller).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tidal.core.embeddings.hashing import GOLDEN, as_uint64, mix64, name_key
from tidal.core.embeddings.spec import RowInitSpec


def _bits(seed: int, table: str, ids: np.ndarray, dim: int) -> np.ndarray:
    """64 random bits per element, shape (len(ids), dim)."""
    row_keys = mix64(as_uint64(ids) ^ name_key("init", seed, table))
    columns = mix64(np.arange(dim, dtype=np.uint64) * GOLDEN)
    return mix64(row_keys[:, None] ^ columns[None, :])


def _unit(bits: np.ndarray) -> np.ndarray:
    """Uniform float64 in (0, 1) from 32-bit integers."""
    return (bits.astype(np.float64) + 0.5) * (1.0 / (1 << 32))


def initial_rows(seed: int, table: str, ids: torch.Tensor, dim: int, spec: RowInitSpec) -> torch.Tensor:
    """The initial values of rows `ids` (1-D int64) of `table`: float32, (len(ids), dim)."""
    array = ids.cpu().numpy()
    if spec.distribution == "zeros" or spec.scale == 0 or len(array) == 0:
        return torch.zeros((len(array), dim), dtype=torch.float32)
    bits = _bits(seed, table, array, dim)
    high, low = _unit(bits >> np.uint64(32)), _unit(bits & np.uint64(0xFFFFFFFF))
    if spec.distribution == "uniform":
        values = (2.0 * high - 1.0) * spec.scale
    else:  # Box-Muller on the two halves
        values = np.sqrt(-2.0 * np.log(high)) * np.cos(2.0 * math.pi * low) * spec.scale
    return torch.from_numpy(values.astype(np.float32))
