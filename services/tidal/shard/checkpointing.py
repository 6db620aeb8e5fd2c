"""A shard's checkpoints for one job, seen from asyncio: when to write, one write at a time.

The snapshot is taken on the event loop, between two pushes (pushes are applied on the
loop, so it is consistent); the files are written in a thread so pushes keep flowing. A
scheduled write runs as a task of the shard's `Supervisor`: a crash in it (a bug; a failing
disk is logged and retried) logs its traceback and ends the shard with exit code 1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidal.core.checkpoint import CheckpointSchedule, CheckpointStore
from tidal.core.embeddings.shard import RowsSnapshot
from tidal.core.recovery import RecoveryLedger
from tidal.core.shard_snapshot import ShardSnapshot, snapshot_shard
from tidal.core.shard_state import ShardState
from tidal.transport.metrics import LATENCY_BUCKETS
from tidal.transport.supervise import Supervisor, cancel_and_wait

log = logging.getLogger(__name__)

# How often the time-based schedule is checked, in seconds.
POLL_S = 0.05
LABELS = ["tidal_job", "shard"]


class RowsSource(Protocol):
    """A job's embedding rows as the checkpointer sees them (shard/rows.py `JobRows`)."""

    def snapshot(self) -> RowsSnapshot:
        """A copy of the rows (a delta of those changed since the previous one, or all)."""

    def force_full(self) -> None:
        """The previous snapshot was not written: the next one must hold every row."""


class CheckpointMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "tidal_shard_checkpoints_total", "Checkpoints written (atomically, fsynced).", LABELS, registry=registry
        )
        self.seconds = Histogram(
            "tidal_shard_checkpoint_seconds",
            "Writing one checkpoint (serialize, hash, write, fsync, rename), in seconds.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.version = Gauge(
            "tidal_shard_checkpoint_version", "Version of the newest checkpoint written.", LABELS, registry=registry
        )
        self.versions_lost = Gauge(
            "tidal_shard_versions_lost",
            "After a restore from a checkpoint: newest version the workers saw from the lost shard minus the "
            "restored version.",
            LABELS,
            registry=registry,
        )
        self.updates_lost = Gauge(
            "tidal_shard_updates_lost",
            "After a restore: acknowledged pushes the checkpoint did not hold.",
            LABELS,
            registry=registry,
        )


class ShardCheckpointer:
    """Writes the checkpoints of one job on the job's schedule.

    Lifecycle: `write` once at start; `run` (the schedule) and `poke` start scheduled writes
    under `supervisor`; on release `close` cancels the write in progress and waits for it,
    then `write` writes the final checkpoint."""

    def __init__(
        self,
        store: CheckpointStore,
        job_id: str,
        state: ShardState,
        metrics: CheckpointMetrics,
        written: int = -1,
        ledger: RecoveryLedger | None = None,
        *,
        supervisor: Supervisor,
        rows: RowsSource | None = None,
    ) -> None:
        self.store = store
        self.supervisor = supervisor
        self.job_id = job_id
        self.state = state
        spec = state.spec.checkpoint
        self.schedule = CheckpointSchedule(spec.every_versions, spec.every_s)
        self.labels = (job_id, str(state.shard_index))
        self.metrics = metrics
        # What restores lost so far: every checkpoint carries it to the next restore.
        self.ledger = ledger or RecoveryLedger()
        # A copy of the job's embedding rows, taken with the snapshot (None: no tables).
        self._rows = rows
        # Version of the newest checkpoint on disk (-1: none yet).
        self.written_version = written
        self._last_at = time.monotonic()
        # The write in progress, if any: one at a time.
        self._writing: asyncio.Task[None] | None = None
        # Checkpoints written by this checkpointer (for the log's level, see `_write`).
        self._count = 0
        if written >= 0:
            metrics.version.labels(*self.labels).set(written)

    def poke(self, first: bool = False) -> None:
        """Starts a checkpoint of the current version if one is due and none is being written.
        Called right after every push, so a count-based checkpoint lands on its exact version,
        by `run` for the time-based one, and (`first`) when the initial parameters arrive."""
        if self.state.partial:
            return  # mid-way through applying a version: the next push's poke takes it whole
        due = self.schedule.due(self.state.version, self.written_version, time.monotonic(), self._last_at)
        if first:
            due = self.state.version > self.written_version
        if self._writing is None and due:
            snapshot = self._snapshot()
            self._writing = self.supervisor.spawn("shard checkpoint writer", self._write(snapshot), may_end=True)

    def _snapshot(self) -> ShardSnapshot:
        """The shard's state, rows included, on the event loop between two pushes."""
        snapshot = snapshot_shard(self.job_id, self.state, self.ledger.lost_by_worker)
        return snapshot if self._rows is None else replace(snapshot, rows=self._rows.snapshot())

    async def run(self) -> None:
        """Checks the time-based schedule until cancelled (and catches up after a slow write)."""
        while True:
            await asyncio.sleep(POLL_S)
            self.poke()

    async def write(self) -> None:
        """Writes a checkpoint of the current version (after any write in progress) unless one
        is on disk already; raises OSError if it fails."""
        if self._writing is not None:
            # Its errors stay with the task: the supervisor has reported them.
            await asyncio.wait({self._writing})
        if self.state.version != self.written_version:
            await self._write(self._snapshot(), final=True)

    async def close(self) -> None:
        """Cancels the scheduled write in progress, if any, and returns once it ended: no
        write of this job runs on (its thread included) when the final one starts."""
        await cancel_and_wait(self._writing)

    async def _write(self, snapshot: ShardSnapshot, final: bool = False) -> None:
        started = time.perf_counter()
        written = False
        try:
            await _in_thread_to_the_end(self.store.write, snapshot, self.state.spec.checkpoint.keep_last)
            written = True
        except OSError as exc:
            if final:
                raise
            # Disk full, say: training goes on; the schedule tries again after a pause.
            log.exception("job %s: checkpoint of version %d failed: %s", self.job_id, snapshot.version, exc)
            self._last_at = time.monotonic()
            return
        finally:
            if not final:
                self._writing = None
            if not written and self._rows is not None:
                # A delta of rows extends the previous write; after one that failed (or was
                # cancelled) only a full snapshot of the rows is sound.
                self._rows.force_full()
        took = time.perf_counter() - started
        self.written_version, self._last_at = snapshot.version, time.monotonic()
        self.metrics.written.labels(*self.labels).inc()
        self.metrics.seconds.labels(*self.labels).observe(took)
        self.metrics.version.labels(*self.labels).set(snapshot.version)
        # One INFO line for a job's first checkpoint here and for its last; the others at DEBUG
        # (one per checkpoint flooded the log: 1,235 lines in 25 minutes). The counter and
        # tidal_shard_checkpoint_version say how many and which.
        self._count += 1
        level = logging.INFO if final or self._count == 1 else logging.DEBUG
        log.log(level, "job %s: checkpoint of version %d written in %.3fs (%d this run%s)", self.job_id,
                snapshot.version, took, self._count, ", final" if final else "")  # fmt: skip


async def _in_thread_to_the_end(fn: Callable[..., None], *args: Any) -> None:
    """Runs `fn` in a thread. Cancelled, it still waits for the thread before it re-raises:
    a thread cannot be stopped, and a checkpoint write must never overlap the next one."""
    done = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        await asyncio.wait({done})
        if not done.cancelled() and (exc := done.exception()) is not None:
            log.warning("a cancelled checkpoint write failed: %s", exc)
        raise
