"""Domain <-> proto for the coordinator's own answers: job status and members. The session's
messages (the events members report, the commands they are sent) convert in
transport/session_convert.py, which both sides of the session share.

The gRPC servicer (coordinator/servicer.py) and the REST app (coordinator/rest.py) convert here
and hand `Control` domain values only; proto classes are imported under aliases (`coord_pb`) so
they never shadow the domain's.
"""

from __future__ import annotations

import math

from tidal.core.job_records import Job
from tidal.core.membership import Member, MemberState, Role
from tidal.transport.session_convert import JOB_STATE_TO_PROTO
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
