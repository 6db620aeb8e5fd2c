"""The row RPCs (PullRows, PushRows, ReadRows) of one shard, without gRPC's types in the way:
checks the caller (identity, job, membership) as Exchange does, decodes the bytes
(transport/rows.py), hands the request to the job's `RowShard` (core/embeddings/shard.py) and
encodes its answer. Requests are handled on the event loop, one at a time, so a checkpoint's
snapshot taken on the loop sees no push half-applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

import torch

from tidal.core.embeddings.shard import RowPushOutcome, RowShard, RowsSnapshot
from tidal.core.errors import DataLossError, DeadlineExceededError, FailedPreconditionError, InvalidArgumentError
from tidal.core.shard_snapshot import ShardSnapshot
from tidal.core.shard_state import ShardState
from tidal.shard.row_metrics import JobRowMetrics, RowMetrics
from tidal.shard.runtime import ShardRuntime
from tidal.shard.runtimes import Runtimes, find_runtime
from tidal.transport import rows as wire
from tidal.transport.guard import require_member
from tidal.v1 import shard_pb2 as shard_pb

_OUTCOME_TO_PROTO = {
    RowPushOutcome.APPLIED: shard_pb.PUSH_OUTCOME_APPLIED,
    RowPushOutcome.BUFFERED: shard_pb.PUSH_OUTCOME_BUFFERED,
    RowPushOutcome.DUPLICATE: shard_pb.PUSH_OUTCOME_DUPLICATE,
    RowPushOutcome.DROPPED_LATE: shard_pb.PUSH_OUTCOME_DROPPED_LATE,
}


class JobRows:
    """One job's rows on this shard, with the wake-up of pulls that wait for a sync step."""

    def __init__(self, job_id: str, shard: RowShard, metrics: JobRowMetrics) -> None:
        self.job_id = job_id
        self.shard = shard
        self.metrics = metrics
        self._changed = asyncio.Condition()

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_step(self, table: str, step: int, timeout_s: float) -> None:
        """Returns once sync table `table` applied step `step`."""

        def ready() -> bool:
            return self.shard.applied_step.get(table, step) >= step

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout_s)
            except TimeoutError:
                raise DeadlineExceededError(
                    f"min_step: table {table!r} did not apply step {step} within {timeout_s:.0f}s (applied: "
                    f"{self.shard.applied_step.get(table)}; its pushes wait for every worker)"
                ) from None

    async def membership_changed(self, members: Iterable[str]) -> None:
        """A member that left no longer holds a sync step up."""
        if self.shard.settle(members):
            await self.notify()

    def snapshot(self) -> RowsSnapshot:
        return self.shard.snapshot()

    def force_full(self) -> None:
        self.shard.force_full()


def build_rows(job_id: str, state: ShardState, metrics: RowMetrics, max_bytes: int = 0) -> JobRows | None:
    """The job's rows on this shard (None when its spec has no embedding tables). `max_bytes`:
    the shard's bound on the bytes of rows it holds (0: none); a job whose share of its tables
    may not fit is refused (InvalidArgumentError naming `embeddings`)."""
    spec = state.spec
    if not spec.embeddings:
        metrics.drop()
        return None
    num_shards = len(state.shard_map.ranges)
    if num_shards != spec.num_shards:
        raise InvalidArgumentError(
            f"num_shards: the job's shard map has {num_shards} shards, its spec {spec.num_shards}; embedding ids "
            "are routed over spec.num_shards"
        )
    shard = RowShard(spec, state.shard_index, num_shards, max_bytes)
    return JobRows(job_id, shard, metrics.for_job(job_id, state.shard_index, list(shard.tables)))


def restore_rows(rows: JobRows, snapshot: ShardSnapshot) -> None:
    """Loads the rows of a checkpoint into a fresh job's rows (DataLossError if they do not fit)."""
    where = f"checkpoint of job {snapshot.job_id} shard {snapshot.shard_index} at version {snapshot.version}"
    if snapshot.rows is None:
        raise DataLossError(f"{where}: holds no embedding rows, the job has tables {sorted(rows.shard.tables)}")
    rows.shard.restore(snapshot.rows, where)
    for table in rows.shard.tables:
        rows.metrics.update(rows.shard, table)


class RowHost(Runtimes, Protocol):
    # The running job's rows or, after it ended, the last job's (None: no tables).
    rows: JobRows | None


class RowService:
    def __init__(self, host: RowHost) -> None:
        self._host = host

    def _rows(self, job_id: str, running: bool = True) -> tuple[ShardRuntime, JobRows]:
        runtime = find_runtime(self._host, job_id, running)
        rows = self._host.rows
        if rows is None or rows.job_id != job_id:
            raise FailedPreconditionError(f"job_id: job {job_id!r} has no embedding tables")
        return runtime, rows

    async def _check_caller(
        self, request: shard_pb.PullRowsRequest | shard_pb.PushRowsRequest
    ) -> tuple[ShardRuntime, JobRows]:
        require_member(request.worker_id, "worker_id")
        runtime, rows = self._rows(request.job_id)
        state = runtime.state
        await runtime.wait_for_epoch(request.membership_epoch, state.spec.step_timeout_s)
        state.check_sender(request.worker_id, request.membership_epoch)
        return runtime, rows

    async def pull(self, request: shard_pb.PullRowsRequest) -> shard_pb.PullRowsResponse:
        runtime, rows = await self._check_caller(request)
        table = rows.shard.table(request.table)
        ids = wire.decode_ids(request.ids)
        wire.check_payload(len(ids), table.dim)
        applied = rows.shard.applied_step.get(table.spec.name)
        if applied is not None and request.min_step > 0:
            await rows.wait_for_step(table.spec.name, request.min_step - 1, runtime.state.spec.step_timeout_s)
        try:
            values = rows.shard.pull(request.table, ids)
        finally:
            rows.metrics.update(rows.shard, table.spec.name)
        payload = wire.encode_rows(values)
        rows.metrics.transferred(table.spec.name, len(request.ids), len(payload))
        return shard_pb.PullRowsResponse(
            dim=table.dim, rows=payload, applied_step=rows.shard.applied_step.get(table.spec.name, -1)
        )

    async def push(self, request: shard_pb.PushRowsRequest) -> shard_pb.PushRowsResponse:
        runtime, rows = await self._check_caller(request)
        table = rows.shard.table(request.table)
        if request.dim != table.dim:
            raise InvalidArgumentError(f"dim: {request.dim}, but table {table.spec.name!r} has rows of dim {table.dim}")
        ids = wire.decode_ids(request.ids, allow_empty=table.spec.mode == "sync")
        wire.check_payload(len(ids), table.dim)
        grads = wire.decode_rows(request.grads, len(ids), table.dim, "grads")
        members = runtime.state.members
        try:
            result = rows.shard.push(
                request.worker_id, request.table, request.push_id, ids, grads, request.step, members, request.more
            )
        finally:
            rows.metrics.update(rows.shard, table.spec.name)
        rows.metrics.transferred(table.spec.name, len(request.ids) + len(request.grads), 0)
        if result.outcome is RowPushOutcome.APPLIED and result.applied_step >= 0:
            await rows.notify()
        outcome = _OUTCOME_TO_PROTO[result.outcome]
        return shard_pb.PushRowsResponse(
            outcome=outcome, rows_applied=result.rows_applied, applied_step=result.applied_step
        )

    async def read(self, request: shard_pb.ReadRowsRequest) -> shard_pb.ReadRowsResponse:
        _, rows = self._rows(request.job_id, running=False)
        table = rows.shard.table(request.table)
        ids = wire.decode_ids(request.ids)
        wire.check_payload(len(ids), table.dim)
        try:
            values, held = rows.shard.read(request.table, ids)
        finally:
            rows.metrics.update(rows.shard, table.spec.name)
        payload = wire.encode_rows(values)
        rows.metrics.transferred(table.spec.name, len(request.ids), len(payload))
        return shard_pb.ReadRowsResponse(dim=table.dim, rows=payload, held=held.to(torch.uint8).numpy().tobytes())
