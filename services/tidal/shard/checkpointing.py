"""A shard's checkpoints for one job, seen from asyncio: when to write, one write at a time.

The snapshot is taken on the event loop, between two pushes (pushes are applied on the
loop, so it is consistent); the files are written in a thread so pushes keep flowing.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidal.core.checkpoint import CheckpointSchedule, CheckpointStore
from tidal.core.recovery import RecoveryLedger
from tidal.core.shard_snapshot import ShardSnapshot, snapshot_shard
from tidal.core.shard_state import ShardState
from tidal.transport.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

# How often the time-based schedule is checked, in seconds.
POLL_S = 0.05
LABELS = ["tidal_job", "shard"]


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
    """Writes the checkpoints of one job on the job's schedule."""

    def __init__(
        self,
        store: CheckpointStore,
        job_id: str,
        state: ShardState,
        metrics: CheckpointMetrics,
        written: int = -1,
        ledger: RecoveryLedger | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.state = state
        spec = state.spec.checkpoint
        self.schedule = CheckpointSchedule(spec.every_versions, spec.every_s)
        self.labels = (job_id, str(state.shard_index))
        self.metrics = metrics
        # What restores lost so far: every checkpoint carries it to the next restore.
        self.ledger = ledger or RecoveryLedger()
        # Version of the newest checkpoint on disk (-1: none yet).
        self.written_version = written
        self._last_at = time.monotonic()
        # The write in progress, if any: one at a time.
        self._writing: asyncio.Task[None] | None = None
        if written >= 0:
            metrics.version.labels(*self.labels).set(written)

    def poke(self, first: bool = False) -> None:
        """Starts a checkpoint of the current version if one is due and none is being written.
        Called right after every push, so a count-based checkpoint lands on its exact version,
        by `run` for the time-based one, and (`first`) when the initial parameters arrive."""
        due = self.schedule.due(self.state.version, self.written_version, time.monotonic(), self._last_at)
        if first:
            due = self.state.version > self.written_version
        if self._writing is None and due:
            snapshot = snapshot_shard(self.job_id, self.state, self.ledger.lost_by_worker)
            self._writing = asyncio.create_task(self._write(snapshot))

    async def run(self) -> None:
        """Checks the time-based schedule until cancelled (and catches up after a slow write)."""
        while True:
            await asyncio.sleep(POLL_S)
            self.poke()

    async def write(self) -> None:
        """Writes a checkpoint of the current version (after any write in progress) unless one
        is on disk already; raises OSError if it fails."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
        if self.state.version != self.written_version:
            await self._write(snapshot_shard(self.job_id, self.state, self.ledger.lost_by_worker), final=True)

    async def _write(self, snapshot: ShardSnapshot, final: bool = False) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.store.write, snapshot, self.state.spec.checkpoint.keep_last)
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
        took = time.perf_counter() - started
        self.written_version, self._last_at = snapshot.version, time.monotonic()
        self.metrics.written.labels(*self.labels).inc()
        self.metrics.seconds.labels(*self.labels).observe(took)
        self.metrics.version.labels(*self.labels).set(snapshot.version)
        log.info("job %s: checkpoint of version %d written in %.3fs", self.job_id, snapshot.version, took)
