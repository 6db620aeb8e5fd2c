"""The parameter shard process: a gRPC server plus one loop over coordinator commands.

The node's long-lived tasks (progress reporter, checkpoint schedule and writes) are supervised
(transport/supervise.py): a crash logs its traceback and ends the process with exit code 1,
as a crash of the coordinator session does (transport/member.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from tidal.core import commands, events
from tidal.core.checkpoint import CheckpointStore
from tidal.core.errors import TidalError
from tidal.core.faults import parse_checkpoint_fault
from tidal.core.recovery import RecoveryLedger
from tidal.core.shard_snapshot import restore_shard
from tidal.core.shard_state import ShardState
from tidal.shard.checkpointing import CheckpointMetrics, ShardCheckpointer
from tidal.shard.convert import build_state, checkpoints_to_proto, progress_report
from tidal.shard.memory import MALLOC_ARENAS, STREAM_WINDOW_BYTES, limit_malloc_arenas
from tidal.shard.metrics import ShardMetrics
from tidal.shard.row_metrics import RowMetrics
from tidal.shard.rows import JobRows, build_rows, restore_rows
from tidal.shard.runtime import ShardRuntime
from tidal.shard.servicer import ShardServicer, add_to_server
from tidal.transport.bulk_listener import BulkListener
from tidal.transport.member import MemberPorts, serve_member
from tidal.transport.metrics import GrpcMetricsInterceptor, PreferredPort
from tidal.transport.server import create_server
from tidal.transport.session import MemberSession
from tidal.transport.settings import ServiceSettings
from tidal.transport.supervise import Supervisor, cancel_and_wait
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import shard_pb2

log = logging.getLogger(__name__)
SERVICE_NAMES = [shard_pb2.DESCRIPTOR.services_by_name["ParameterShard"].full_name]
# Progress reports are sent at most this often, in seconds, and once more after the last change.
PROGRESS_INTERVAL_S = 0.1
# Checkpoint retention is applied at start and this often, in seconds.
SWEEP_INTERVAL_S = 3600.0


def restore_state(
    store: CheckpointStore, job_id: str, state: ShardState, rows: JobRows | None = None
) -> RecoveryLedger:
    """Loads the newest valid checkpoint of the job's shard into `state` and `rows` (DataLossError
    if none)."""
    snapshot, refused = store.load_latest(job_id, state.shard_index)
    restore_shard(state, snapshot)
    if rows is not None:
        restore_rows(rows, snapshot)
    log.warning(
        "job %s: shard %d restored from its checkpoint of version %d%s",
        job_id,
        state.shard_index,
        snapshot.version,
        f" (refused {len(refused)} newer: {'; '.join(refused)})" if refused else "",
    )
    return RecoveryLedger.restored(snapshot)


class ShardNode:
    """Carries out the coordinator's commands for this shard.

    With a checkpoint store, each job is checkpointed on its schedule (and once at start, so
    a shard lost at any time can be restored), and a final time when the job ends or the
    shard shuts down. Shutting down drains: new pushes are refused with UNAVAILABLE, the
    final checkpoint is written, then workers still waiting are answered UNAVAILABLE, so
    they reconnect to the restarted shard."""

    def __init__(
        self,
        session: MemberSession,
        metrics: ShardMetrics,
        store: CheckpointStore | None = None,
        checkpoint_metrics: CheckpointMetrics | None = None,
        retention_s: float = 0.0,
        row_metrics: RowMetrics | None = None,
        max_embedding_bytes: int = 0,
    ) -> None:
        self.session = session
        # The most bytes of embedding rows this shard holds for a job (0: no bound; budget.py).
        self.max_embedding_bytes = max_embedding_bytes
        self.row_metrics = row_metrics or RowMetrics(CollectorRegistry())
        # The running job's embedding rows or, after it ended, the last job's (shard/rows.py).
        self.rows: JobRows | None = None
        # Ended jobs' checkpoints are deleted this long after their last write (0: never).
        self.retention_s = retention_s
        self.metrics = metrics
        self.store = store
        self.checkpoint_metrics = checkpoint_metrics
        self.runtime: ShardRuntime | None = None
        self.last_runtime: ShardRuntime | None = None
        # What the running job lost, if this shard was restored from a checkpoint.
        self.recovery = RecoveryLedger()
        # True once the process is shutting down: pushes are refused (UNAVAILABLE).
        self.draining = False
        self._reporter: asyncio.Task[None] | None = None
        self._checkpointer: ShardCheckpointer | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        # Set when a supervised task of the node crashed: the process must stop (`serve_shard`).
        self.crashed = asyncio.Event()
        self.supervisor = Supervisor(self.crashed)

    def pushed(self) -> None:
        """A push was handled: checkpoint now if one is due (see ShardCheckpointer.poke)."""
        if self._checkpointer is not None:
            self._checkpointer.poke()

    def initialized(self) -> None:
        """The job's initial parameters arrived: checkpoint them at once, so a shard lost before
        its first interval can be restored too."""
        if self._checkpointer is not None:
            self._checkpointer.poke(first=True)

    def worker_resumed(self, worker_id: str, last_version: int, completed_pushes: int) -> None:
        """A worker reconnected (see RecoveryLedger): counts what a restore lost."""
        if self.runtime is not None:
            self.recovery.worker_resumed(self.runtime.state, worker_id, last_version, completed_pushes)
            log.info(
                "job %s: %s reconnected (saw version %d, %d pushes completed); lost so far: %d versions, %d updates",
                self.runtime.job_id,
                worker_id,
                last_version,
                completed_pushes,
                self.recovery.versions_lost,
                self.recovery.updates_lost,
            )

    async def on_command(self, command: commands.Command) -> None:
        runtime = self.runtime
        match command:
            case commands.AssignShard():
                await self._assign(command)
            case commands.ChangeMembership() if runtime and runtime.job_id == command.job_id:
                await runtime.set_membership(command.membership_epoch, list(command.worker_ids))
                if self.rows is not None and self.rows.job_id == command.job_id:
                    await self.rows.membership_changed(command.worker_ids)
            case commands.Release() if runtime and runtime.job_id == command.job_id:
                await self.release(command.reason or "released")

    async def _assign(self, assign: commands.AssignShard) -> None:
        if self.runtime is not None:
            await self.release("replaced by a new assignment")
        job_id = assign.job.job_id
        try:
            state = await asyncio.to_thread(build_state, assign)
            rows = build_rows(job_id, state, self.row_metrics, self.max_embedding_bytes)
            recovery = RecoveryLedger()
            if assign.restore:
                if self.store is None:
                    raise TidalError("restore: this shard was started without --checkpoint-dir")
                recovery = await asyncio.to_thread(restore_state, self.store, job_id, state, rows)
            checkpointer = None
            if self.store is not None and self.checkpoint_metrics is not None:
                checkpointer = ShardCheckpointer(
                    self.store, job_id, state, self.checkpoint_metrics, recovery.restored_version, recovery,
                    supervisor=self.supervisor, rows=rows,
                )  # fmt: skip
                await checkpointer.write()  # a restored shard's version (a new job's shard has none yet)
            metrics = self.metrics.for_job(job_id, state.spec.mode.value, assign.shard_index)
            self.runtime = self.last_runtime = ShardRuntime(job_id, state, metrics)
            self.rows = rows
        except (TidalError, OSError) as exc:
            # An expected failure (bad spec, disk): its message says it all, no traceback.
            log.exception("job %s: cannot set up shard %d: %s", job_id, assign.shard_index, exc)
            await self._send(events.TaskFailed(job_id, str(exc)))
            return
        self.recovery, self._checkpointer = recovery, checkpointer
        if checkpointer is not None:
            self._checkpoint_task = self.supervisor.spawn("shard checkpoint schedule", checkpointer.run())
        log.info("job %s: shard %d holds %d elements", job_id, assign.shard_index, self.runtime.state.numel)
        await self._send(events.ShardReady(job_id, state.version, checkpointing=checkpointer is not None))
        self._start_reporter(self.runtime)

    def _start_reporter(self, runtime: ShardRuntime) -> None:
        self._reporter = self.supervisor.spawn("shard progress reporter", self._report_progress(runtime))

    async def _send(self, event: events.Event) -> None:
        await self.session.send(event)

    async def release(self, reason: str | None = None) -> None:
        """Ends the job on this shard after a final checkpoint. Without a reason the process is
        shutting down: pushes are refused from now on (UNAVAILABLE)."""
        if reason is None:
            self.draining, reason = True, "shard shutting down"
        # Waited for: no progress report or scheduled checkpoint of this job runs on after it.
        await cancel_and_wait(self._reporter, self._checkpoint_task)
        if self._checkpointer is not None:
            await self._checkpointer.close()
            try:
                await self._checkpointer.write()
            except OSError as exc:
                log.exception("job %s: final checkpoint failed: %s", self._checkpointer.job_id, exc)
        if self.runtime:
            await self.runtime.close(reason)
        self.runtime = self._reporter = None  # last_runtime keeps the final parameters readable
        self._checkpointer = self._checkpoint_task = None

    def sweep_checkpoints(self, now: float) -> list[str]:
        """Deletes the checkpoints of ended jobs past the retention (CheckpointStore.sweep);
        the job this shard runs is kept whatever its age. Runs in a thread."""
        if self.store is None or self.retention_s <= 0:
            return []
        runtime = self.runtime
        try:
            removed = self.store.sweep(now, self.retention_s, {runtime.job_id} if runtime else ())
        except OSError as exc:
            log.warning("deleting old checkpoints failed (tried again in an hour): %s", exc)
            return []
        if removed:
            log.info("deleted the checkpoints of %d jobs not written for %gs (--checkpoint-retention-s): %s",
                     len(removed), self.retention_s, ", ".join(removed))  # fmt: skip
        return removed

    async def sweep_hourly(self) -> None:
        """`sweep_checkpoints` every SWEEP_INTERVAL_S until cancelled (the first ran at start)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            await asyncio.to_thread(self.sweep_checkpoints, time.time())

    async def resume(self, resumed: bool) -> None:
        """After the coordinator session was reopened: a shard the coordinator no longer
        knows drops its job; one that resumed reports its progress again at once."""
        if not resumed:
            await self.release("the coordinator registered this shard as a new member")
        elif self.runtime is not None:
            if self._reporter:
                self._reporter.cancel()
            self._start_reporter(self.runtime)

    async def _report_progress(self, runtime: ShardRuntime) -> None:
        last: tuple[int, ...] = ()
        while True:
            state = runtime.state
            c = state.counters
            checkpoint = self._checkpointer.written_version if self._checkpointer else -1
            lost = (self.recovery.updates_lost, self.recovery.versions_lost)
            now = (state.version, c.updates_applied, c.updates_rejected, checkpoint, *lost, sum(c.by_worker.values()))
            if now != last:
                last = now
                if self.checkpoint_metrics is not None and self.recovery.restored_version >= 0:
                    labels = (runtime.job_id, str(state.shard_index))
                    self.checkpoint_metrics.updates_lost.labels(*labels).set(lost[0])
                    self.checkpoint_metrics.versions_lost.labels(*labels).set(lost[1])
                await self._send(progress_report(runtime, checkpoint, self.recovery))
            await asyncio.sleep(PROGRESS_INTERVAL_S)


async def serve_shard(member: Coroutine[Any, Any, int], node: ShardNode) -> int:
    """Runs the member (`serve_member`) until it ends or a supervised task of `node` crashed.
    A crash cancels it, which shuts it down the way a crashed session does (release, stop the
    server, no goodbye), and the exit code is 1."""
    serving = asyncio.create_task(member)
    crashed = asyncio.create_task(node.crashed.wait())
    try:
        await asyncio.wait({serving, crashed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(serving, crashed)
    code = 0 if serving.cancelled() else serving.result()
    return 1 if node.supervisor.failed else code


async def run_shard(
    coordinator: str,
    host: str,
    port: int,
    metrics_port: int | PreferredPort,
    advertise_host: str,
    ready_file: Path | None,
    register_timeout_s: float,
    exit_after_job: bool = False,
    checkpoint_dir: Path | None = None,
    checkpoint_fault: str = "",
    *,
    checkpoint_retention_s: float = 0.0,
    name: str = "",
    shard_index: int | None = None,
    settings: ServiceSettings,
    scrape_target_dir: Path | None = None,
    limit_arenas: bool = False,
    max_embedding_bytes: int = 0,
) -> int:
    registry = CollectorRegistry()
    security = settings.security
    limit_malloc_arenas(MALLOC_ARENAS, limit_arenas)  # before gRPC starts its threads (shard/memory.py)
    interceptors = [GrpcMetricsInterceptor(registry)]
    server, bound_port = create_server(
        f"{host}:{port}", security, interceptors, stream_window_bytes=STREAM_WINDOW_BYTES
    )
    fault = parse_checkpoint_fault(checkpoint_fault)
    store = CheckpointStore(checkpoint_dir, fault=fault) if checkpoint_dir else None

    def checkpoints() -> list[coord_pb.ShardCheckpoint]:
        return checkpoints_to_proto(store.scan() if store is not None else [])

    session = MemberSession(
        coordinator,
        common_pb.ROLE_SHARD,
        security,
        address=f"{advertise_host}:{bound_port}",
        name=name or socket.gethostname(),
        checkpoints=checkpoints,
        shard_index=shard_index,
    )
    node = ShardNode(
        session, ShardMetrics(registry), store, CheckpointMetrics(registry), checkpoint_retention_s,
        RowMetrics(registry), max_embedding_bytes,
    )  # fmt: skip
    # Before registering, so the checkpoints reported to the coordinator are the ones kept.
    node.sweep_checkpoints(time.time())
    sweeper = None
    if store is not None and checkpoint_retention_s > 0:
        sweeper = node.supervisor.spawn("checkpoint retention", node.sweep_hourly())
    bulk_port = None
    if settings.bulk_channel:
        bulk_port = BulkListener.open(host, settings.bulk_port, security)
        bulk_port.start()
        log.info("bulk channel: port %d", bulk_port.port)
    add_to_server(ShardServicer(node, settings.shared_memory, bulk_port), server)
    ports = MemberPorts(host, bound_port, metrics_port)
    member = serve_member(
        "shard", server, ports, registry, session, node, SERVICE_NAMES, ready_file, register_timeout_s, exit_after_job,
        security=security, scrape_target_dir=scrape_target_dir,
    )  # fmt: skip
    try:
        return await serve_shard(member, node)
    finally:
        await cancel_and_wait(sweeper)
        if bulk_port is not None:
            await bulk_port.close()
