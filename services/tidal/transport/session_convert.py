"""Domain <-> proto for the coordinator session, both sides in one place: the events members
report (SessionRequest) and the commands the coordinator sends them (SessionResponse).

Members call `event_to_proto` and `command_from_proto`, the coordinator `event_from_proto` and
`command_to_proto`. It lives in transport because every service uses it and no service may
import another.

Each message's pair sits side by side: `_x_to_proto` builds the oneof's inner message from the
domain value, `_x_from_proto` rebuilds the value from it. A row of `_EVENTS` or `_COMMANDS`
ties the pair to its domain type and to the oneof field that carries it. A new message: write
its pair next to its kin and add one row; tests/unit/test_session_convert.py round-trips every
type of core/events.py and core/commands.py, so a missing side fails there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from tidal.core import commands, events
from tidal.core.job_records import Job, JobState, ShardProgress
from tidal.core.layout import Layout
from tidal.core.shard_map import ShardMap
from tidal.core.spec import parse_job_spec
from tidal.transport.shard_map_serde import (
    shard_map_from_proto,
    shard_map_to_proto,
    tensors_from_proto,
    tensors_to_proto,
)
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

JOB_STATE_TO_PROTO = {
    JobState.PENDING: common_pb.JOB_STATE_PENDING,
    JobState.RUNNING: common_pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb.JOB_STATE_CANCELLED,
}
JOB_STATE_FROM_PROTO = {v: k for k, v in JOB_STATE_TO_PROTO.items()}


@dataclass(frozen=True)
class _EventPair:
    # The SessionRequest oneof field that carries the event.
    field: str
    to_proto: Callable[[Any], Message]
    from_proto: Callable[[Any], events.Event]


@dataclass(frozen=True)
class _CommandPair:
    # The SessionResponse oneof field that carries the command.
    field: str
    to_proto: Callable[[Any], Message]
    # (the receiving member's id, the inner message): the id does not travel.
    from_proto: Callable[[str, Any], commands.Command]


# --- events: member -> coordinator ----------------------------------------------------------
def _heartbeat_to_proto(e: events.Heartbeat) -> coord_pb.Heartbeat:
    return coord_pb.Heartbeat(seq=e.seq)


def _heartbeat_from_proto(m: coord_pb.Heartbeat) -> events.Heartbeat:
    return events.Heartbeat(m.seq)


def _goodbye_to_proto(e: events.Goodbye) -> coord_pb.Goodbye:
    return coord_pb.Goodbye(reason=e.reason)


def _goodbye_from_proto(m: coord_pb.Goodbye) -> events.Goodbye:
    return events.Goodbye(m.reason)


def _worker_progress_to_proto(e: events.WorkerProgressReport) -> coord_pb.WorkerProgress:
    return coord_pb.WorkerProgress(
        job_id=e.job_id,
        step=e.step,
        samples=e.samples,
        loss=e.loss,
        step_time_s=e.step_time_s,
        pushes=e.pushes,
        param_version=e.param_version,
    )


def _worker_progress_from_proto(m: coord_pb.WorkerProgress) -> events.WorkerProgressReport:
    return events.WorkerProgressReport(
        m.job_id, m.step, m.samples, m.loss, m.step_time_s, m.pushes, param_version=m.param_version
    )


def _shard_progress_to_proto(e: events.ShardProgressReport) -> coord_pb.ShardProgress:
    p = e.progress
    return coord_pb.ShardProgress(
        job_id=e.job_id,
        version=p.version,
        updates_applied=p.updates_applied,
        updates_rejected=p.updates_rejected,
        staleness_sum=p.staleness_sum,
        staleness_count=p.staleness_count,
        staleness_max=p.staleness_max,
        updates_lost=p.updates_lost,
        versions_lost=p.versions_lost,
        checkpoint_version=p.checkpoint_version,
        pushes_by_worker=p.pushes_by_worker,
    )


def _shard_progress_from_proto(m: coord_pb.ShardProgress) -> events.ShardProgressReport:
    progress = ShardProgress(
        m.version,
        m.updates_applied,
        m.updates_rejected,
        m.staleness_sum,
        m.staleness_count,
        m.staleness_max,
        m.updates_lost,
        m.versions_lost,
        m.checkpoint_version,
        pushes_by_worker=dict(m.pushes_by_worker),
    )
    return events.ShardProgressReport(m.job_id, progress)


def _shard_ready_to_proto(e: events.ShardReady) -> coord_pb.ShardReady:
    return coord_pb.ShardReady(job_id=e.job_id, version=e.version, checkpointing=e.checkpointing)


def _shard_ready_from_proto(m: coord_pb.ShardReady) -> events.ShardReady:
    return events.ShardReady(m.job_id, m.version, m.checkpointing)


def _worker_finished_to_proto(e: events.WorkerFinished) -> coord_pb.WorkerFinished:
    return coord_pb.WorkerFinished(job_id=e.job_id, steps=e.steps, samples=e.samples, pushes=e.pushes)


def _worker_finished_from_proto(m: coord_pb.WorkerFinished) -> events.WorkerFinished:
    return events.WorkerFinished(m.job_id, m.steps, m.samples, m.pushes)


def _eval_report_to_proto(e: events.EvalReport) -> coord_pb.EvalReport:
    return coord_pb.EvalReport(
        job_id=e.job_id,
        version=e.version,
        val_loss=e.val_loss,
        val_accuracy=e.val_accuracy,
        final=e.final,
        metric=e.metric,
        metric_higher_is_better=e.higher_is_better,
    )


def _eval_report_from_proto(m: coord_pb.EvalReport) -> events.EvalReport:
    # An empty metric, or no direction, is what a worker that predates named metrics sends.
    higher = m.metric_higher_is_better if m.HasField("metric_higher_is_better") else True
    return events.EvalReport(m.job_id, m.version, m.val_loss, m.val_accuracy, m.final, m.metric or "accuracy", higher)


def _layout_report_to_proto(e: events.LayoutReport) -> coord_pb.LayoutReport:
    layout = e.layout
    return coord_pb.LayoutReport(
        job_id=e.job_id, tensors=tensors_to_proto(layout.tensors), init_digest=layout.init_digest
    )


def _layout_report_from_proto(m: coord_pb.LayoutReport) -> events.LayoutReport:
    # Only what travels is checked here (dtypes, shapes); the limits are the job's to apply.
    return events.LayoutReport(m.job_id, Layout(tensors_from_proto(m.tensors, "layout_report.tensors"), m.init_digest))


def _task_failed_to_proto(e: events.TaskFailed) -> coord_pb.TaskFailed:
    return coord_pb.TaskFailed(job_id=e.job_id, message=e.message)


def _task_failed_from_proto(m: coord_pb.TaskFailed) -> events.TaskFailed:
    return events.TaskFailed(m.job_id, m.message)


_EVENTS: dict[type, _EventPair] = {
    events.Heartbeat: _EventPair("heartbeat", _heartbeat_to_proto, _heartbeat_from_proto),
    events.Goodbye: _EventPair("goodbye", _goodbye_to_proto, _goodbye_from_proto),
    events.WorkerProgressReport: _EventPair("worker_progress", _worker_progress_to_proto, _worker_progress_from_proto),
    events.ShardProgressReport: _EventPair("shard_progress", _shard_progress_to_proto, _shard_progress_from_proto),
    events.ShardReady: _EventPair("shard_ready", _shard_ready_to_proto, _shard_ready_from_proto),
    events.WorkerFinished: _EventPair("worker_finished", _worker_finished_to_proto, _worker_finished_from_proto),
    events.EvalReport: _EventPair("eval_report", _eval_report_to_proto, _eval_report_from_proto),
    events.LayoutReport: _EventPair("layout_report", _layout_report_to_proto, _layout_report_from_proto),
    events.TaskFailed: _EventPair("task_failed", _task_failed_to_proto, _task_failed_from_proto),
}
_EVENT_FIELDS = {pair.field: pair for pair in _EVENTS.values()}


def event_to_proto(event: events.Event) -> coord_pb.SessionRequest:
    """The session message that reports `event` (a member sends it)."""
    pair = _EVENTS[type(event)]
    return coord_pb.SessionRequest(**{pair.field: pair.to_proto(event)})


def event_from_proto(msg: coord_pb.SessionRequest) -> events.Event | None:
    """The event a session message reports; None for one that reports none (an empty message,
    or a second 'open'), which the coordinator ignores."""
    field = msg.WhichOneof("kind") or ""
    pair = _EVENT_FIELDS.get(field)
    return pair.from_proto(getattr(msg, field)) if pair is not None else None


# --- commands: coordinator -> member --------------------------------------------------------
def _job_from_proto(
    job_id: str, spec_json: str, shard_map: common_pb.ShardMap | None, epoch: int, worker_ids: Iterable[str]
) -> Job:
    # The job as an assignment tells it: the coordinator's bookkeeping (progress, times) stays
    # with the coordinator, so those fields keep their defaults.
    return Job(
        job_id=job_id,
        spec=parse_job_spec(spec_json),
        shard_map=None if shard_map is None else shard_map_from_proto(shard_map),
        created_at=0.0,
        membership_epoch=epoch,
        worker_ids=list(worker_ids),
    )


def _planned(job: Job) -> ShardMap:
    if job.shard_map is None:  # JobManager assigns shards and workers only once it planned
        raise AssertionError(f"job {job.job_id} has no shard map yet")
    return job.shard_map


def _assign_shard_to_proto(c: commands.AssignShard) -> coord_pb.AssignShard:
    job = c.job
    return coord_pb.AssignShard(
        job_id=job.job_id,
        spec_json=job.spec.to_json(),
        shard_index=c.shard_index,
        shard_map=shard_map_to_proto(_planned(job)),
        membership_epoch=job.membership_epoch,
        worker_ids=job.worker_ids,
        restore=c.restore,
    )


def _assign_shard_from_proto(member_id: str, m: coord_pb.AssignShard) -> commands.AssignShard:
    job = _job_from_proto(m.job_id, m.spec_json, m.shard_map, m.membership_epoch, m.worker_ids)
    return commands.AssignShard(member_id, job, m.shard_index, restore=m.restore)


def _prepare_worker_to_proto(c: commands.PrepareWorker) -> coord_pb.PrepareWorker:
    job = c.job
    return coord_pb.PrepareWorker(
        job_id=job.job_id,
        spec_json=job.spec.to_json(),
        rank=c.rank,
        world_size=len(job.worker_ids),
        membership_epoch=job.membership_epoch,
        worker_ids=job.worker_ids,
    )


def _prepare_worker_from_proto(member_id: str, m: coord_pb.PrepareWorker) -> commands.PrepareWorker:
    # Sent while the workers prepare: there is no shard map yet.
    job = _job_from_proto(m.job_id, m.spec_json, None, m.membership_epoch, m.worker_ids)
    return commands.PrepareWorker(member_id, job, m.rank)


def _assign_worker_to_proto(c: commands.AssignWorker) -> coord_pb.AssignWorker:
    job = c.job
    return coord_pb.AssignWorker(
        job_id=job.job_id,
        spec_json=job.spec.to_json(),
        rank=c.rank,
        world_size=len(job.worker_ids),
        membership_epoch=job.membership_epoch,
        shard_map=shard_map_to_proto(_planned(job)),
        shard_addresses=c.shard_addresses,
        worker_ids=job.worker_ids,
    )


def _assign_worker_from_proto(member_id: str, m: coord_pb.AssignWorker) -> commands.AssignWorker:
    job = _job_from_proto(m.job_id, m.spec_json, m.shard_map, m.membership_epoch, m.worker_ids)
    return commands.AssignWorker(member_id, job, m.rank, shard_addresses=tuple(m.shard_addresses))


def _change_membership_to_proto(c: commands.ChangeMembership) -> coord_pb.MembershipChanged:
    return coord_pb.MembershipChanged(job_id=c.job_id, membership_epoch=c.membership_epoch, worker_ids=c.worker_ids)


def _change_membership_from_proto(member_id: str, m: coord_pb.MembershipChanged) -> commands.ChangeMembership:
    return commands.ChangeMembership(member_id, m.job_id, m.membership_epoch, tuple(m.worker_ids))


def _move_shard_to_proto(c: commands.MoveShard) -> coord_pb.ShardMoved:
    return coord_pb.ShardMoved(job_id=c.job_id, shard_index=c.shard_index, address=c.shard_address, version=c.version)


def _move_shard_from_proto(member_id: str, m: coord_pb.ShardMoved) -> commands.MoveShard:
    # The shard's member id does not travel: the worker needs its address only.
    return commands.MoveShard(member_id, m.job_id, m.shard_index, "", m.version, shard_address=m.address)


def _evaluate_to_proto(c: commands.Evaluate) -> coord_pb.Evaluate:
    return coord_pb.Evaluate(job_id=c.job_id, final=c.final)


def _evaluate_from_proto(member_id: str, m: coord_pb.Evaluate) -> commands.Evaluate:
    return commands.Evaluate(member_id, m.job_id, m.final)


def _release_to_proto(c: commands.Release) -> coord_pb.ReleaseJob:
    return coord_pb.ReleaseJob(job_id=c.job_id, final_state=JOB_STATE_TO_PROTO[c.state], reason=c.reason)


def _release_from_proto(member_id: str, m: coord_pb.ReleaseJob) -> commands.Release:
    # A state this side does not know still releases the job: the member only stops its work.
    return commands.Release(member_id, m.job_id, JOB_STATE_FROM_PROTO.get(m.final_state, JobState.FAILED), m.reason)


_COMMANDS: dict[type, _CommandPair] = {
    commands.AssignShard: _CommandPair("assign_shard", _assign_shard_to_proto, _assign_shard_from_proto),
    commands.PrepareWorker: _CommandPair("prepare_worker", _prepare_worker_to_proto, _prepare_worker_from_proto),
    commands.AssignWorker: _CommandPair("assign_worker", _assign_worker_to_proto, _assign_worker_from_proto),
    commands.ChangeMembership: _CommandPair(
        "membership_changed", _change_membership_to_proto, _change_membership_from_proto
    ),
    commands.MoveShard: _CommandPair("shard_moved", _move_shard_to_proto, _move_shard_from_proto),
    commands.Evaluate: _CommandPair("evaluate", _evaluate_to_proto, _evaluate_from_proto),
    commands.Release: _CommandPair("release_job", _release_to_proto, _release_from_proto),
}
_COMMAND_FIELDS = {pair.field: pair for pair in _COMMANDS.values()}


def command_to_proto(command: commands.Command) -> coord_pb.SessionResponse:
    """The session message for a command `Control` delivered (addresses already filled in)."""
    pair = _COMMANDS[type(command)]
    return coord_pb.SessionResponse(**{pair.field: pair.to_proto(command)})


def command_from_proto(member_id: str, msg: coord_pb.SessionResponse) -> commands.Command | None:
    """The command a session message gives member `member_id`; None for one that gives none
    (the session's welcome), which the member ignores."""
    field = msg.WhichOneof("kind") or ""
    pair = _COMMAND_FIELDS.get(field)
    return pair.from_proto(member_id, getattr(msg, field)) if pair is not None else None
