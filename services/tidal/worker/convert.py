"""Domain <-> proto for the worker, in one place (the node adapts, this converts): its assignment
and its own service's answer. The session's messages convert in transport/session_convert.py,
shared with the shard and the coordinator.
"""

from __future__ import annotations

from tidal.core import commands
from tidal.v1 import worker_pb2 as worker_pb
from tidal.worker.loop import Assignment, TrainingRun


def assignment_from_command(command: commands.AssignWorker) -> Assignment:
    job = command.job
    return Assignment(
        job_id=job.job_id,
        worker_id=command.member_id,
        spec=job.spec,
        rank=command.rank,
        world_size=len(job.worker_ids),
        membership_epoch=job.membership_epoch,
        shard_map=job.shard_map,
        shard_addresses=list(command.shard_addresses),
        worker_ids=tuple(job.worker_ids),
    )


def worker_info_to_proto(member_id: str, run: TrainingRun | None, slowdown: float) -> worker_pb.GetWorkerInfoResponse:
    """What the worker is doing: its current job's run (empty fields before the first job)."""
    return worker_pb.GetWorkerInfoResponse(
        member_id=member_id,
        job_id=run.a.job_id if run else "",
        rank=run.a.rank if run else 0,
        step=run.step if run else 0,
        param_version=max(run.version, 0) if run else 0,
        slowdown=slowdown,
    )
