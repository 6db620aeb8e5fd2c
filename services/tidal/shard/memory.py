"""What a shard sets for its memory: glibc's malloc arenas and gRPC's per-stream receive window.

Measured on the bench's memory case (bench/NOTES.md "Shard memory"): with glibc's default of
up to 8 arenas per core, gRPC's threads allocate the messages they receive and send in arenas
of their own, where memory freed by one arena is never reused by another nor, under tidal's
raised trim threshold (transport/process.py), handed back; and gRPC's bandwidth-delay probe
grows each stream's receive window until a worker's whole push (100 MB in that case) waits in
the shard's memory while the push before it is applied.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping

from tidal.config import ENV

# One arena for every thread of the shard.
MALLOC_ARENAS = 1
# Bytes of each Exchange stream gRPC receives ahead of the shard: four 1 MB messages
# (transport/limits.py CHUNK_BYTES), more than a 10 Gbit/s link's bandwidth-delay product.
STREAM_WINDOW_BYTES = 4 << 20
_M_ARENA_MAX = -8


def arena_limit_wanted(environ: Mapping[str, str]) -> bool:
    """Whether to cap the arenas: not when the environment sets MALLOC_ARENA_MAX (glibc read it
    at start: it wins) or TIDAL_MALLOC_TUNING is 0. Decided where the process builds its
    configuration (cli_common.py)."""
    return environ.get(ENV["malloc_tuning"], "1") != "0" and "MALLOC_ARENA_MAX" not in environ


def limit_malloc_arenas(arenas: int, wanted: bool) -> bool:
    """Caps glibc's malloc arenas at `arenas` for the threads started from now on (call it
    before the gRPC server starts its threads) if `wanted` (`arena_limit_wanted`); not without
    glibc. Returns whether the cap is in force."""
    if not wanted:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))
