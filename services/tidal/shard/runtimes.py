"""Where a shard's services find the job they serve: the running job's runtime, or the last one.

The servicers (Exchange streams, row RPCs) share this view of the shard process; the process
(shard/main.py) implements it.
"""

from __future__ import annotations

from typing import Protocol

from tidal.core.errors import FailedPreconditionError, UnavailableError
from tidal.shard.runtime import ShardRuntime


class Runtimes(Protocol):
    # The running job, if any.
    runtime: ShardRuntime | None
    # The running job or, after it ended, the last one (its final parameters stay readable).
    last_runtime: ShardRuntime | None
    # True while the process shuts down: pushes are refused with UNAVAILABLE.
    draining: bool

    def worker_resumed(self, worker_id: str, last_version: int, completed_pushes: int) -> None:
        """A worker reconnected and said what it saw of this shard index before."""
        ...

    def pushed(self) -> None:
        """A push was handled (a checkpoint may be due)."""
        ...

    def initialized(self) -> None:
        """A worker's initial parameters were set (the first checkpoint is due)."""
        ...


def find_runtime(runtimes: Runtimes, job_id: str, running: bool = True) -> ShardRuntime:
    """The job's runtime: the running one, or (`running` False) the last one, finished or not."""
    if running and runtimes.draining:
        raise UnavailableError("shard: shutting down; reconnect once it restarted")
    runtime = runtimes.runtime if running else runtimes.last_runtime
    if runtime is None:
        raise FailedPreconditionError(f"job_id: this shard has no running job (asked for {job_id!r})")
    if runtime.job_id != job_id:
        raise FailedPreconditionError(f"job_id: this shard serves job {runtime.job_id!r}, not {job_id!r}")
    return runtime
