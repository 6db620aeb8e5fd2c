"""The coordinator's one-job mode after a restart: the job from the job file is found among the
jobs restored from the state folder and followed, never submitted a second time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from tidal.coordinator.control import Control
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.one_job import OneJob, restored_job, run_one_job
from tidal.coordinator.store import StateStore
from tidal.core.spec import parse_job_spec

SPEC = {"name": "from-file", "mode": "sync", "num_workers": 1, "num_shards": 1, "steps": 5}


def control(state_dir: Path) -> Control:
    return Control(CoordinatorCounters(CollectorRegistry()), store=StateStore(state_dir))


def test_a_restarted_coordinator_follows_the_restored_job_instead_of_submitting_again(tmp_path: Path) -> None:
    async def before_restart() -> str:
        first = control(tmp_path)
        job = await first.submit(json.dumps(SPEC))
        await first.cancel(job.job_id)  # ends it, so the one-job run below returns at once
        first.close()
        return job.job_id

    job_id = asyncio.run(before_restart())

    async def after_restart() -> tuple[int, list[str]]:
        second = control(tmp_path)
        code = await run_one_job(second, OneJob(json.dumps(SPEC)), asyncio.Event())
        return code, [job.job_id for job in second.jobs.all()]

    code, job_ids = asyncio.run(after_restart())
    assert job_ids == [job_id]  # nothing new was submitted
    assert code == 1  # the restored job was cancelled: not a success


def test_a_different_spec_is_not_taken_for_the_restored_job(tmp_path: Path) -> None:
    async def run() -> None:
        first = control(tmp_path)
        await first.submit(json.dumps(SPEC))
        first.close()
        second = control(tmp_path)
        assert restored_job(second, parse_job_spec({**SPEC, "steps": 6})) is None
        assert restored_job(second, parse_job_spec(SPEC)) is not None

    asyncio.run(run())
