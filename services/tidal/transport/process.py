"""What every service process does the same way: logging, signals, the ready file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any


def setup_logging(role: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(), format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s", force=True
    )
    # grpc.aio logs cancelled calls at ERROR; they are routine when peers go away.
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)


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
