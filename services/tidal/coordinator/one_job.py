"""The coordinator's one-job mode: `--job-file`, `--exit-when-done`, `--scale-down`.

What a batch deployment needs to end by itself (Kubernetes, a smoke run): submit the spec at
start (it stays pending until enough shards and workers registered), follow it to its end,
give the job's members time to leave (those started with `--exit-after-job` exit on the
release, and must not see their coordinator vanish first), then scale the listed Kubernetes
workloads to 0 so their controllers do not restart the pods that exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from tidal.coordinator.control import Control
from tidal.core.errors import NotFoundError, TidalError
from tidal.core.job_records import Job, JobState
from tidal.core.spec import JobSpec, parse_job_spec
from tidal.k8s_scale import ApiServer, ScaleTarget, scale_down

log = logging.getLogger(__name__)

# How long the job's members get to leave after the release, in seconds.
MEMBERS_LEAVE_S = 30.0
# After scaling down (its own Deployment included), how long to wait for the SIGTERM that
# deletes this pod; exiting first would get the container restarted and the job resubmitted.
SIGTERM_AFTER_SCALE_S = 60.0


@dataclass(frozen=True)
class OneJob:
    # The job spec as JSON (the CLI has read and parsed the file).
    spec_json: str
    exit_when_done: bool = False
    # Kubernetes workloads to scale to 0 once the job ended and its members left.
    scale_down: list[ScaleTarget] = field(default_factory=list)
    # The pod's Kubernetes variables (k8s_scale.CLUSTER_ENV), read at start, for the scale-down.
    cluster_env: Mapping[str, str] = field(default_factory=dict)


async def run_one_job(control: Control, one: OneJob, stop: asyncio.Event) -> int:
    """Submits and follows the job; returns the exit code (0: it succeeded).

    A coordinator restarted with its state folder finds the job it submitted before it went
    away among the restored jobs and follows that one: submitting again would train twice."""
    try:
        job = restored_job(control, parse_job_spec(one.spec_json))
        if job is None:
            job = await control.submit(one.spec_json)
            log.info("job %s submitted from the job file; waiting for it to end", job.job_id)
        else:
            log.info("job %s from the job file was restored (%s); following it", job.job_id, job.state.value)
    except TidalError as exc:
        log.exception("job file: %s", exc)
        return 1
    async for _ in control.watch(job.job_id):
        pass
    log.info("job %s %s%s", job.job_id, job.state.value, f": {job.message}" if job.message else "")
    code = 0 if job.state is JobState.SUCCEEDED else 1
    if not one.exit_when_done:
        return code
    left_behind = await wait_members_left(control, job.members, MEMBERS_LEAVE_S)
    if left_behind:
        log.warning("members still connected after %.0fs: %s", MEMBERS_LEAVE_S, ", ".join(left_behind))
    if one.scale_down:
        try:
            errors = await asyncio.to_thread(scale_down, ApiServer.in_cluster(one.cluster_env), one.scale_down)
        except TidalError as exc:
            errors = [str(exc)]
            log.exception("cannot scale down: %s", exc)
        if errors:
            return 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SIGTERM_AFTER_SCALE_S)
    log.info("job %s over; coordinator exiting with %d (--exit-when-done)", job.job_id, code)
    return code


def restored_job(control: Control, spec: JobSpec) -> Job | None:
    """The newest job with exactly this spec, if the coordinator restored one from its state."""
    same = [job for job in control.jobs.all() if job.spec == spec]
    return max(same, key=lambda job: job.created_at, default=None)


async def wait_members_left(control: Control, member_ids: list[str], timeout_s: float) -> list[str]:
    """Waits until none of `member_ids` is live (their sessions closed); returns those still live.
    A member already forgotten (its retention ran out) is gone too."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        live = [m for m in member_ids if _is_live(control, m)]
        if not live or loop.time() >= deadline:
            return live
        await asyncio.sleep(0.1)


def _is_live(control: Control, member_id: str) -> bool:
    try:
        return control.membership.get(member_id).live
    except NotFoundError:
        return False
