"""Counter-based random numbers: value ``i`` of a stream is a hash of (stream key, i).

Any sample, or any id's hidden weight, is then computed on its own, in any order, on any
worker, without storing a table (a 10^7-row planted table is never materialised).
The mixer is SplitMix64's finaliser, on numpy uint64 arrays (which wrap silently).
"""

from __future__ import annotations

import numpy as np

__all__ = ["normal", "stream_key", "uniform"]

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def _mix_int(z: int) -> int:
    z = (z + _GAMMA) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_key(seed: int, *tags: int) -> int:
    """A 64-bit key for the stream named by ``tags`` under ``seed`` (any Python int)."""
    z = _mix_int(seed & _MASK)
    for tag in tags:
        z = _mix_int(z ^ (tag & _MASK))
    return z


def _bits(key: int, counters: np.ndarray) -> np.ndarray:
    z = np.uint64(key) + (counters.astype(np.uint64) + np.uint64(1)) * np.uint64(_GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(key: int, counters: np.ndarray) -> np.ndarray:
    """Uniform float64 in the open interval (0, 1), one per counter (non-negative integers)."""
    return ((_bits(key, counters) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def normal(key: int, counters: np.ndarray) -> np.ndarray:
    """Standard normal float64, one per counter (Box-Muller on two derived streams)."""
    u1, u2 = uniform(stream_key(key, 1), counters), uniform(stream_key(key, 2), counters)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
