"""Domain <-> proto for the worker, in one place (the node adapts, this converts): its assignment,
its own service's answer and the progress it reports. The session's generic pair lives in
transport/member_convert.py, shared with the shard.
"""

from __future__ import annotations

from tidal.core import commands, events
from tidal.transport.member_convert import event_to_proto
from tidal.v1 import coordinator_pb2 as coord_pb
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


def progress_to_proto(event: events.WorkerProgressReport, param_version: int) -> coord_pb.SessionRequest:
    """The progress report, with the parameter version the worker saw: on the wire for
    observers, though the coordinator's domain event does not carry it."""
    msg = event_to_proto(event)
    msg.worker_progress.param_version = param_version
    return msg


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
