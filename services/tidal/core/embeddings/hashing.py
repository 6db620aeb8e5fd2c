"""A 64-bit mixing function over numpy arrays, the root of routing and initialisation.

splitmix64's finaliser (Steele et al. 2014): a bijection on 64-bit integers whose outputs
are close to uniform even for consecutive inputs. numpy's uint64 arithmetic wraps, which is
what the function needs; torch's int64 shifts are arithmetic, so it is done in numpy.
"""

from __future__ import annotations

import hashlib

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on a uint64 array (a new array)."""
    z = x + GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def name_key(*parts: str | int) -> np.uint64:
    """A stable 64-bit key of a few names and numbers (BLAKE2b: the same in every process,
    unlike Python's salted `hash`)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return np.uint64(int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little"))


def as_uint64(ids: np.ndarray) -> np.ndarray:
    """int64 ids reinterpreted as uint64 (negative ids included), without a copy."""
    return np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64)
