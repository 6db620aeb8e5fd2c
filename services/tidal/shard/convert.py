"""Domain <-> proto for the shard, in one place (the servicer and the node adapt, this converts):
its own service's answers, its assignment (`build_state`), the reports it sends the coordinator
and the checkpoints it announces when it registers. The session's messages convert in
transport/session_convert.py, shared with the worker and the coordinator.
"""

from __future__ import annotations

from collections.abc import Iterable

from tidal.core import commands, events
from tidal.core.checkpoint import CheckpointRef
from tidal.core.errors import TidalError
from tidal.core.job_records import ShardProgress
from tidal.core.push_outcomes import PushResult
from tidal.core.recovery import RecoveryLedger
from tidal.core.shard_state import ShardState
from tidal.shard.runtime import ShardRuntime
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import shard_pb2 as shard_pb

_OUTCOME_TO_PROTO = {
    "applied": shard_pb.PUSH_OUTCOME_APPLIED,
    "buffered": shard_pb.PUSH_OUTCOME_BUFFERED,
    "duplicate": shard_pb.PUSH_OUTCOME_DUPLICATE,
    "dropped_late": shard_pb.PUSH_OUTCOME_DROPPED_LATE,
    "rejected_stale": shard_pb.PUSH_OUTCOME_REJECTED_STALE,
}


def push_ack(push_id: str, result: PushResult) -> shard_pb.ExchangeResponse:
    """The ack of a push, as the Exchange stream sends it."""
    return shard_pb.ExchangeResponse(
        ack=shard_pb.PushAck(
            push_id=push_id,
            outcome=_OUTCOME_TO_PROTO[result.outcome.value],
            version=result.version,
            staleness=result.staleness,
        )
    )


def shard_info_to_proto(runtime: ShardRuntime | None) -> shard_pb.GetShardInfoResponse:
    """What the shard holds: its latest job's shard (empty before the first job)."""
    if runtime is None:
        return shard_pb.GetShardInfoResponse()
    state = runtime.state
    start, end = state.shard_map.ranges[state.shard_index]
    return shard_pb.GetShardInfoResponse(
        job_id=runtime.job_id,
        shard_index=state.shard_index,
        version=state.version,
        range=common_pb.ShardRange(shard=state.shard_index, start=start, end=end),
        updates_applied=state.counters.updates_applied,
        updates_rejected=state.counters.updates_rejected,
        membership_epoch=state.membership_epoch,
    )


def build_state(assign: commands.AssignShard) -> ShardState:
    """The shard's state for the job: no parameters until a worker sends them (the shard
    builds no model and runs no user code), or a checkpoint's once restored."""
    job = assign.job
    if job.shard_map is None or not 0 <= assign.shard_index < len(job.shard_map.ranges):
        raise TidalError(f"shard_index: {assign.shard_index} is not a shard of the job's shard map")
    return ShardState(job.spec, assign.shard_index, job.shard_map, None, job.membership_epoch, list(job.worker_ids))


def progress_report(runtime: ShardRuntime, checkpoint_version: int, recovery: RecoveryLedger) -> events.Event:
    """The shard's progress as the coordinator is told it."""
    state = runtime.state
    c = state.counters
    progress = ShardProgress(
        version=state.version,
        updates_applied=c.updates_applied,
        updates_rejected=c.updates_rejected,
        staleness_sum=c.staleness.total,
        staleness_count=c.staleness.count,
        staleness_max=c.staleness.maximum,
        updates_lost=recovery.updates_lost,
        versions_lost=recovery.versions_lost,
        checkpoint_version=checkpoint_version,
        pushes_by_worker=dict(c.by_worker),
    )
    return events.ShardProgressReport(runtime.job_id, progress)


def checkpoints_to_proto(refs: Iterable[CheckpointRef]) -> list[coord_pb.ShardCheckpoint]:
    return [coord_pb.ShardCheckpoint(job_id=r.job_id, shard_index=r.shard_index, version=r.version) for r in refs]
