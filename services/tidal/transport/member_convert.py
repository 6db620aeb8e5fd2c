"""Domain <-> proto for a member's side of the coordinator session: the events a shard or worker
reports (`event_to_proto`) and the commands it is sent (`command_from_proto`).

The inverses of coordinator/convert.py's `event_from_proto` and `command_to_proto`. They live in
transport because both member services use them and no service may import another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tidal.core import commands, events
from tidal.core.job_records import Job, JobState
from tidal.core.spec import parse_job_spec
from tidal.transport.shard_map_serde import shard_map_from_proto
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

JOB_STATE_FROM_PROTO = {
    common_pb.JOB_STATE_PENDING: JobState.PENDING,
    common_pb.JOB_STATE_RUNNING: JobState.RUNNING,
    common_pb.JOB_STATE_SUCCEEDED: JobState.SUCCEEDED,
    common_pb.JOB_STATE_FAILED: JobState.FAILED,
    common_pb.JOB_STATE_CANCELLED: JobState.CANCELLED,
}


# --- domain events -> session messages ------------------------------------------------------
def _shard_progress_to_proto(event: events.ShardProgressReport) -> coord_pb.SessionRequest:
    p = event.progress
    return coord_pb.SessionRequest(
        shard_progress=coord_pb.ShardProgress(
            job_id=event.job_id,
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
    )


def _worker_progress_to_proto(e: events.WorkerProgressReport) -> coord_pb.SessionRequest:
    return coord_pb.SessionRequest(
        worker_progress=coord_pb.WorkerProgress(
            job_id=e.job_id, step=e.step, samples=e.samples, loss=e.loss, step_time_s=e.step_time_s, pushes=e.pushes
        )
    )


def _eval_report_to_proto(e: events.EvalReport) -> coord_pb.SessionRequest:
    return coord_pb.SessionRequest(
        eval_report=coord_pb.EvalReport(
            job_id=e.job_id,
            version=e.version,
            val_loss=e.val_loss,
            val_accuracy=e.val_accuracy,
            final=e.final,
            metric=e.metric,
            metric_higher_is_better=e.higher_is_better,
        )
    )


_EVENT_TO_PROTO: dict[type, Callable[[Any], coord_pb.SessionRequest]] = {
    events.Heartbeat: lambda e: coord_pb.SessionRequest(heartbeat=coord_pb.Heartbeat()),
    events.Goodbye: lambda e: coord_pb.SessionRequest(goodbye=coord_pb.Goodbye(reason=e.reason)),
    events.WorkerProgressReport: _worker_progress_to_proto,
    events.ShardProgressReport: _shard_progress_to_proto,
    events.ShardReady: lambda e: coord_pb.SessionRequest(
        shard_ready=coord_pb.ShardReady(job_id=e.job_id, version=e.version, checkpointing=e.checkpointing)
    ),
    events.WorkerFinished: lambda e: coord_pb.SessionRequest(
        worker_finished=coord_pb.WorkerFinished(job_id=e.job_id, steps=e.steps, samples=e.samples, pushes=e.pushes)
    ),
    events.EvalReport: _eval_report_to_proto,
    events.TaskFailed: lambda e: coord_pb.SessionRequest(
        task_failed=coord_pb.TaskFailed(job_id=e.job_id, message=e.message)
    ),
}


def event_to_proto(event: events.Event) -> coord_pb.SessionRequest:
    """The session message that reports `event`."""
    return _EVENT_TO_PROTO[type(event)](event)


# --- session messages -> domain commands ----------------------------------------------------
def _job_from_proto(
    job_id: str, spec_json: str, shard_map: common_pb.ShardMap, epoch: int, worker_ids: Iterable[str]
) -> Job:
    # The job as an assignment tells it: the coordinator's bookkeeping (progress, times) stays
    # with the coordinator, so those fields keep their defaults.
    return Job(
        job_id=job_id,
        spec=parse_job_spec(spec_json),
        shard_map=shard_map_from_proto(shard_map),
        created_at=0.0,
        membership_epoch=epoch,
        worker_ids=list(worker_ids),
    )


def _assign_shard_from_proto(member_id: str, msg: coord_pb.SessionResponse) -> commands.Command:
    a = msg.assign_shard
    job = _job_from_proto(a.job_id, a.spec_json, a.shard_map, a.membership_epoch, a.worker_ids)
    return commands.AssignShard(member_id, job, a.shard_index, restore=a.restore)


def _assign_worker_from_proto(member_id: str, msg: coord_pb.SessionResponse) -> commands.Command:
    a = msg.assign_worker
    job = _job_from_proto(a.job_id, a.spec_json, a.shard_map, a.membership_epoch, a.worker_ids)
    return commands.AssignWorker(member_id, job, a.rank, shard_addresses=tuple(a.shard_addresses))


def _shard_moved_from_proto(member_id: str, msg: coord_pb.SessionResponse) -> commands.Command:
    m = msg.shard_moved
    # The shard's member id does not travel: the worker needs its address only.
    return commands.MoveShard(member_id, m.job_id, m.shard_index, "", m.version, shard_address=m.address)


def _release_from_proto(member_id: str, msg: coord_pb.SessionResponse) -> commands.Command:
    r = msg.release_job
    # A state this side does not know still releases the job: the member only stops its work.
    return commands.Release(member_id, r.job_id, JOB_STATE_FROM_PROTO.get(r.final_state, JobState.FAILED), r.reason)


_COMMAND_FROM_PROTO: dict[str, Callable[[str, coord_pb.SessionResponse], commands.Command]] = {
    "assign_shard": _assign_shard_from_proto,
    "assign_worker": _assign_worker_from_proto,
    "membership_changed": lambda member_id, msg: commands.ChangeMembership(
        member_id,
        msg.membership_changed.job_id,
        msg.membership_changed.membership_epoch,
        tuple(msg.membership_changed.worker_ids),
    ),
    "shard_moved": _shard_moved_from_proto,
    "evaluate": lambda member_id, msg: commands.Evaluate(member_id, msg.evaluate.job_id, msg.evaluate.final),
    "release_job": _release_from_proto,
}


def command_from_proto(member_id: str, msg: coord_pb.SessionResponse) -> commands.Command | None:
    """The command a session message gives member `member_id`; None for one that gives none
    (the session's welcome), which the member ignores."""
    decode = _COMMAND_FROM_PROTO.get(msg.WhichOneof("kind") or "")
    return decode(member_id, msg) if decode is not None else None
