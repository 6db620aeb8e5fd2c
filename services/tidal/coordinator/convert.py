"""Domain <-> proto for the coordinator, in one place: job status, members, the events members
report (`event_from_proto`) and the commands they are sent (`command_to_proto`).

The gRPC servicer (coordinator/servicer.py) and the REST app (coordinator/rest.py) convert here
and hand `Control` domain values only; proto classes are imported under aliases (`coord_pb`) so
they never shadow the domain's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tidal.core import commands, events
from tidal.core.job_records import Job, JobState, ShardProgress
from tidal.core.membership import Member, MemberState, Role
from tidal.transport.shard_map_serde import shard_map_to_proto
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

ROLE_TO_PROTO = {Role.WORKER: common_pb.ROLE_WORKER, Role.SHARD: common_pb.ROLE_SHARD}
ROLE_FROM_PROTO = {v: k for k, v in ROLE_TO_PROTO.items()}
MEMBER_STATE_TO_PROTO = {
    MemberState.IDLE: common_pb.MEMBER_STATE_IDLE,
    MemberState.ASSIGNED: common_pb.MEMBER_STATE_ASSIGNED,
    MemberState.FAILED: common_pb.MEMBER_STATE_FAILED,
    MemberState.LEFT: common_pb.MEMBER_STATE_LEFT,
}
JOB_STATE_TO_PROTO = {
    JobState.PENDING: common_pb.JOB_STATE_PENDING,
    JobState.RUNNING: common_pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: common_pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: common_pb.JOB_STATE_FAILED,
    JobState.CANCELLED: common_pb.JOB_STATE_CANCELLED,
}


def member_to_proto(member: Member, now: float) -> coord_pb.Member:
    return coord_pb.Member(
        member_id=member.member_id,
        role=ROLE_TO_PROTO[member.role],
        state=MEMBER_STATE_TO_PROTO[member.state],
        address=member.address,
        name=member.name,
        job_id=member.job_id,
        heartbeat_age_s=max(0.0, now - member.last_seen),
    )


def job_to_proto(job: Job) -> coord_pb.JobStatus:
    shards = job.shards.values()
    staleness_count = sum(s.staleness_count for s in shards)
    losses = [w.loss for w in job.workers.values() if not math.isnan(w.loss)]
    status = coord_pb.JobStatus(
        job_id=job.job_id,
        name=job.spec.name,
        state=JOB_STATE_TO_PROTO[job.state],
        mode=job.spec.mode.value,
        spec_json=job.spec.to_json(),
        version=job.version,
        target_version=job.spec.target_version,
        samples=job.samples,
        train_loss=sum(losses) / len(losses) if losses else 0.0,
        staleness_mean=sum(s.staleness_sum for s in shards) / staleness_count if staleness_count else 0.0,
        staleness_max=max((s.staleness_max for s in shards), default=0),
        updates_applied=sum(s.updates_applied for s in shards),
        updates_rejected=sum(s.updates_rejected for s in shards),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        message=job.message,
        membership_epoch=job.membership_epoch,
        workers=[
            coord_pb.WorkerStatus(
                member_id=member_id,
                rank=w.rank,
                step=w.step,
                samples=w.samples,
                loss=0.0 if math.isnan(w.loss) else w.loss,
                step_time_s=w.step_time_s,
                finished=w.finished,
                pushes=w.pushes,
                lost=w.lost,
            )
            for member_id, w in job.workers.items()
        ],
        evals=[
            coord_pb.EvalPoint(
                elapsed_s=e.elapsed_s,
                version=e.version,
                val_loss=e.val_loss,
                val_accuracy=e.val_accuracy,
                metric=e.metric,
            )
            for e in job.evals
        ],
        shard_restarts=[
            coord_pb.ShardRestart(
                shard_index=r.shard_index,
                member_id=r.member_id,
                restored_version=r.restored_version,
                versions_lost=r.versions_lost,
                updates_lost=r.updates_lost,
                recovery_s=0.0 if r.recovering else r.ready_at - r.lost_at,
                lost_at=r.lost_at,
            )
            for r in job.restarts
        ],
    )
    if job.evals:
        last = job.evals[-1]
        status.val_loss, status.val_accuracy = last.val_loss, last.val_accuracy
        status.val_metric, status.val_metric_higher_is_better = last.metric, last.higher_is_better
    return status


def _assign_shard_to_proto(command: commands.AssignShard) -> coord_pb.SessionResponse:
    job = command.job
    return coord_pb.SessionResponse(
        assign_shard=coord_pb.AssignShard(
            job_id=job.job_id,
            spec_json=job.spec.to_json(),
            shard_index=command.shard_index,
            shard_map=shard_map_to_proto(job.shard_map),
            membership_epoch=job.membership_epoch,
            worker_ids=job.worker_ids,
            restore=command.restore,
        )
    )


def _move_shard_to_proto(command: commands.MoveShard) -> coord_pb.SessionResponse:
    return coord_pb.SessionResponse(
        shard_moved=coord_pb.ShardMoved(
            job_id=command.job_id,
            shard_index=command.shard_index,
            address=command.shard_address,
            version=command.version,
        )
    )


def _assign_worker_to_proto(command: commands.AssignWorker) -> coord_pb.SessionResponse:
    job = command.job
    return coord_pb.SessionResponse(
        assign_worker=coord_pb.AssignWorker(
            job_id=job.job_id,
            spec_json=job.spec.to_json(),
            rank=command.rank,
            world_size=len(job.worker_ids),
            membership_epoch=job.membership_epoch,
            shard_map=shard_map_to_proto(job.shard_map),
            shard_addresses=command.shard_addresses,
            worker_ids=job.worker_ids,
        )
    )


def _change_membership_to_proto(command: commands.ChangeMembership) -> coord_pb.SessionResponse:
    return coord_pb.SessionResponse(
        membership_changed=coord_pb.MembershipChanged(
            job_id=command.job_id, membership_epoch=command.membership_epoch, worker_ids=command.worker_ids
        )
    )


def _evaluate_to_proto(command: commands.Evaluate) -> coord_pb.SessionResponse:
    return coord_pb.SessionResponse(evaluate=coord_pb.Evaluate(job_id=command.job_id, final=command.final))


def _release_to_proto(command: commands.Release) -> coord_pb.SessionResponse:
    return coord_pb.SessionResponse(
        release_job=coord_pb.ReleaseJob(
            job_id=command.job_id, final_state=JOB_STATE_TO_PROTO[command.state], reason=command.reason
        )
    )


_COMMAND_TO_PROTO: dict[type, Callable[[Any], coord_pb.SessionResponse]] = {
    commands.AssignShard: _assign_shard_to_proto,
    commands.MoveShard: _move_shard_to_proto,
    commands.AssignWorker: _assign_worker_to_proto,
    commands.ChangeMembership: _change_membership_to_proto,
    commands.Evaluate: _evaluate_to_proto,
    commands.Release: _release_to_proto,
}


def command_to_proto(command: commands.Command) -> coord_pb.SessionResponse:
    """The session message for a command `Control` delivered (addresses already filled in)."""
    return _COMMAND_TO_PROTO[type(command)](command)


# --- session messages -> domain events ----------------------------------------------------
def shard_progress_from_proto(msg: coord_pb.ShardProgress) -> ShardProgress:
    return ShardProgress(
        msg.version,
        msg.updates_applied,
        msg.updates_rejected,
        msg.staleness_sum,
        msg.staleness_count,
        msg.staleness_max,
        msg.updates_lost,
        msg.versions_lost,
        msg.checkpoint_version,
        pushes_by_worker=dict(msg.pushes_by_worker),
    )


def _worker_progress_from_proto(msg: coord_pb.SessionRequest) -> events.Event:
    p = msg.worker_progress
    return events.WorkerProgressReport(p.job_id, p.step, p.samples, p.loss, p.step_time_s, p.pushes)


def _shard_progress_from_proto(msg: coord_pb.SessionRequest) -> events.Event:
    return events.ShardProgressReport(msg.shard_progress.job_id, shard_progress_from_proto(msg.shard_progress))


def _shard_ready_from_proto(msg: coord_pb.SessionRequest) -> events.Event:
    r = msg.shard_ready
    return events.ShardReady(r.job_id, r.version, r.checkpointing)


def _worker_finished_from_proto(msg: coord_pb.SessionRequest) -> events.Event:
    p = msg.worker_finished
    return events.WorkerFinished(p.job_id, p.steps, p.samples, p.pushes)


def _eval_report_from_proto(msg: coord_pb.SessionRequest) -> events.Event:
    p = msg.eval_report
    # An empty metric, or no direction, is what a worker that predates named metrics sends.
    higher = p.metric_higher_is_better if p.HasField("metric_higher_is_better") else True
    return events.EvalReport(p.job_id, p.version, p.val_loss, p.val_accuracy, p.final, p.metric or "accuracy", higher)


_EVENT_FROM_PROTO: dict[str, Callable[[coord_pb.SessionRequest], events.Event]] = {
    "heartbeat": lambda msg: events.Heartbeat(),
    "goodbye": lambda msg: events.Goodbye(msg.goodbye.reason),
    "worker_progress": _worker_progress_from_proto,
    "shard_progress": _shard_progress_from_proto,
    "shard_ready": _shard_ready_from_proto,
    "worker_finished": _worker_finished_from_proto,
    "eval_report": _eval_report_from_proto,
    "task_failed": lambda msg: events.TaskFailed(msg.task_failed.job_id, msg.task_failed.message),
}


def event_from_proto(msg: coord_pb.SessionRequest) -> events.Event | None:
    """The event a session message reports; None for one that reports none (an empty message,
    or a second 'open'), which the session ignores."""
    decode = _EVENT_FROM_PROTO.get(msg.WhichOneof("kind") or "")
    return decode(msg) if decode is not None else None
