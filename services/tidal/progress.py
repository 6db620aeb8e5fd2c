"""A rich progress bar that follows a job through WatchJob."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tidal.client import TidalClient, job_state_name
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb


def stdout_console() -> Console:
    """A console for standard output; piped output (scripts, logs) is not squeezed into 80 columns."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def metric_name(job: coord_pb.JobStatus) -> str:
    """The name of the job's validation metric (accuracy, skill, rmse, ...)."""
    return job.val_metric or "accuracy"


def describe(job: coord_pb.JobStatus) -> str:
    state = job_state_name(job.state)
    if state == "pending":
        return f"{job.mode:>5} {state:>9}"  # what it waits for is printed above the bar (follow_job)
    metric = f" val {metric_name(job)} {job.val_accuracy:.3f}" if job.HasField("val_accuracy") else ""
    return f"{job.mode:>5} {state:>9}  loss {job.train_loss:.4f}{metric}"


async def follow_job(client: TidalClient, job_id: str, console: Console) -> coord_pb.JobStatus:
    """Shows the job's progress (versions applied) until it ends; returns its last status. While
    the job is pending, what it waits for is printed, whole, each time that changes."""
    columns = (
        TextColumn("{task.fields[job]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    last = await client.get(job_id)
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(describe(last), total=max(last.target_version, 1), job=job_id)
        waiting = ""
        async for status in client.watch(job_id):
            last = status
            if status.state == common_pb.JOB_STATE_PENDING and status.message and status.message != waiting:
                waiting = status.message
                progress.console.print(f"{job_id} pending: {waiting}", highlight=False, soft_wrap=True)
            progress.update(task, completed=min(status.version, status.target_version), description=describe(status))
    return last
