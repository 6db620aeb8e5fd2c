"""What every service process does the same way: logging, signals, the ready file."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tidal.config import ENV

# glibc malloc thresholds for processes that allocate and free tensor-sized buffers every
# step. With the defaults, every buffer above the (dynamic) mmap threshold is mapped and
# unmapped again, paying page faults and zeroing on each use, and freed memory is trimmed
# back to the kernel at once. Raised, the buffers stay in the heap and are reused.
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = (1 << 31) - 1
# The same settings as environment variables, for processes tidal does not start itself.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_BYTES)}
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def setup_logging(role: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(), format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s", force=True
    )
    # grpc.aio logs cancelled calls at ERROR; they are routine when peers go away.
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)


def malloc_tuning_wanted(environ: Mapping[str, str]) -> bool:
    """Whether to tune: not when `TIDAL_MALLOC_TUNING` is 0, nor when the environment already
    sets glibc's own variables (glibc read them at start; they win)."""
    return environ.get(ENV["malloc_tuning"], "1") != "0" and not any(k in environ for k in MALLOC_ENV)


def tune_malloc(wanted: bool) -> bool:
    """Applies the malloc thresholds above if `wanted` (`malloc_tuning_wanted`, decided where the
    process builds its configuration, cli_common.py); returns whether they are in force."""
    if not wanted:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def stop_on_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT, so services shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def write_ready_file(path: Path | None, info: dict[str, Any]) -> None:
    """Atomically writes where the service listens, for launchers that bound port 0."""
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**info, "pid": os.getpid()}))
    tmp.replace(path)
