"""Runs every job of a comparison, one after the other, on one local cluster.

Ranks follow the order in which workers registered with the coordinator, so the runner
starts worker processes one at a time: the process with `worker_slowdowns[r]` becomes rank
r of every job. When a worker process has exited (killed by its job spec, or crashed), the
workers from its rank on are replaced in order, so the next run has the same machines at
the same ranks. Fresh processes first run a warm-up job that is not reported, so one-off
costs (data set load, model build, the first full garbage collections) stay out of the
compared timings; before runs with a kill, whose timings are not reported, a short one.

Every wait is bounded: a job by `job_timeout_s` (then cancelled), members returning to idle
and processes exiting by the constants below. The caller owns the cluster and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time

from rich.console import Console

from tidal.client import TERMINAL_STATES, TidalClient
from tidal.compare.metrics import Sample, for_job, scrape
from tidal.compare.results import RunResult, add_metrics, from_status
from tidal.compare.spec import CompareSpec, PlannedRun, warm_up_spec
from tidal.core.errors import DeadlineExceededError, FailedPreconditionError, TidalError, UnavailableError
from tidal.core.spec import parse_job_spec
from tidal.launcher import LocalCluster
from tidal.progress import follow_job
from tidal.v1 import common_pb2 as common_pb

# Longest wait for a job's members to return to idle, and for enough idle members to exist;
# both normally take well under a second.
IDLE_TIMEOUT_S = 60.0
# Longest wait for a worker that its job spec kills to be gone, and for SIGTERM to stop one.
EXIT_TIMEOUT_S = 15.0


class CompareRunner:
    def __init__(self, spec: CompareSpec, cluster: LocalCluster, console: Console) -> None:
        self.spec = spec
        self.cluster = cluster
        self.console = console
        self.slowdowns = list(spec.cluster.worker_slowdowns)
        self.workers: list[str] = []  # process names, in registration (= rank) order
        self._spawned = 0
        self._cold = True  # fresh worker processes that have not run a job yet
        self._last_job = ""
        self.closed = False  # set when the cluster is being stopped: start no more processes
        # Every worker process that exited and was replaced: after which job, exit code, expected?
        self.exits: list[dict[str, object]] = []

    # --- worker processes -------------------------------------------------------------
    def start_workers(self) -> None:
        """Starts the worker processes one by one, so that registration order is rank order."""
        for rank in range(len(self.slowdowns)):
            self.workers.append(self._spawn(rank))

    def _spawn(self, rank: int) -> str:
        if self.closed:
            raise UnavailableError("cluster: stopping; no more worker processes are started")
        name = f"worker-{rank}" if self._spawned < len(self.slowdowns) else f"worker-{rank}-{self._spawned}"
        self._spawned += 1
        self.cluster.spawn_worker(name, self.slowdowns[rank])
        self.cluster.wait_ready([name])
        self._cold = True
        return name

    def processes(self) -> dict[str, tuple[str, float]]:
        """member id -> (process name, slowdown) of the current workers."""
        return {
            self.cluster.services[name].info["member_id"]: (name, self.slowdowns[rank])
            for rank, name in enumerate(self.workers)
        }

    def replace_exited_workers(self, expect_exit_of: int | None = None) -> list[str]:
        """Replaces every worker process that has exited, and all later ranks, in rank order.

        `expect_exit_of`: a rank whose process is being killed; it gets time to be gone.
        Returns the names of the processes that had exited.
        """
        doomed = self.workers[expect_exit_of] if expect_exit_of is not None else None
        if doomed is not None:
            deadline = time.monotonic() + EXIT_TIMEOUT_S
            while self.cluster.services[doomed].alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        exited = [rank for rank, name in enumerate(self.workers) if not self.cluster.services[name].alive()]
        if not exited:
            return []
        gone = [self.workers[rank] for rank in exited]
        for name in gone:
            code = self.cluster.services[name].process.returncode
            self.exits.append(
                {"after_job": self._last_job, "process": name, "exit_code": code, "expected": name == doomed}
            )
        for name in self.workers[exited[0] :]:
            self._stop(name)
        for rank in range(exited[0], len(self.workers)):
            self.workers[rank] = self._spawn(rank)
        return gone

    def _stop(self, name: str) -> None:
        process = self.cluster.services[name].process
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    # --- jobs -----------------------------------------------------------------------------
    async def warm_up(self, short: bool = False) -> None:
        """Runs the warm-up job if fresh worker processes joined since the last one."""
        if not self._cold:
            return
        if self.spec.warm_up_steps == 0:
            self._cold = False
            return
        async with TidalClient(self.cluster.coordinator_address, self.cluster.client_security()) as client:
            data = warm_up_spec(self.spec, short)
            warm = parse_job_spec(data)
            await self._wait_idle(client, warm.num_workers, warm.num_shards)
            job = await client.submit(data)
            self._last_job = job.job_id
            final = await asyncio.wait_for(client.wait(job.job_id), self.spec.job_timeout_s)
            if final.state != common_pb.JOB_STATE_SUCCEEDED:
                raise FailedPreconditionError(f"warm-up job {job.job_id} did not succeed: {final.message}")
            await self._wait_released(client, job.job_id)
        self._cold = False

    async def run(self, planned: PlannedRun) -> RunResult:
        """Submits one job, follows it with a progress bar, and collects its numbers."""
        spec = self.spec
        # A worker may also have exited after the previous job ended (a crash): replace it first.
        await asyncio.to_thread(self.replace_exited_workers)
        await self.warm_up(short=planned.kill)
        async with TidalClient(self.cluster.coordinator_address, self.cluster.client_security()) as client:
            await self._wait_idle(client, planned.spec.num_workers, planned.spec.num_shards)
            if self._cold:  # a worker exited meanwhile and was replaced
                await self.warm_up(short=planned.kill)
                await self._wait_idle(client, planned.spec.num_workers, planned.spec.num_shards)
            processes = self.processes()
            job = await client.submit(planned.spec_dict)
            self._last_job = job.job_id
            state = message = None
            try:
                await asyncio.wait_for(follow_job(client, job.job_id, self.console), spec.job_timeout_s)
            except TimeoutError:
                with contextlib.suppress(TidalError):  # it may have ended meanwhile
                    await client.cancel(job.job_id)
                state, message = "timed out", f"still running after {spec.job_timeout_s:.0f}s; cancelled"
            # GetJob, not the watch's last message: that one can predate the terminal state.
            final = await client.get(job.job_id)
            if state is None and final.state not in TERMINAL_STATES:
                state, message = "unknown", "the job status stream ended before the job did"
            result = from_status(planned.label, planned.kill, final, spec.target_val_loss, processes, state, message)
            # A member replaces a job's series only when its next job starts; once this job's
            # members are idle again their last step has been counted: scrape then.
            await self._wait_released(client, job.job_id)
        if not planned.kill:
            workers, shards, missing = await asyncio.to_thread(self._scrape, job.job_id)
            add_metrics(result, workers, shards)
            result.missing_metrics = missing
        kill = spec.kill if planned.kill else None
        doomed = self.cluster.services[self.workers[kill.rank]] if kill else None
        # A job that failed may have lost the doomed worker: give it time to be gone. One that
        # succeeded went on without it (fault tolerance): it is gone already, or was never killed.
        failed = final.state != common_pb.JOB_STATE_SUCCEEDED
        expected = kill is not None and doomed is not None and (failed or not doomed.alive())
        result.replaced_workers = await asyncio.to_thread(
            self.replace_exited_workers, kill.rank if kill and expected else None
        )
        if kill is not None and doomed is not None:
            result.killed = not doomed.alive()
            result.kill_rank, result.kill_at_step = kill.rank, kill.at_step
        return result

    def _scrape(self, job_id: str) -> tuple[list[Sample], list[Sample], list[str]]:
        shards = [name for name in self.cluster.services if name.startswith("shard-")]
        pages: dict[str, list[Sample]] = {}
        missing = []
        context = self.cluster.client_security().ssl_context()
        for name in [*self.workers, *shards]:
            try:
                pages[name] = for_job(scrape(self.cluster.metrics_url(name), context), job_id)
            except TidalError:
                # A live process whose page cannot be read is an error, not a missing number.
                if self.cluster.services[name].alive():
                    raise
                missing.append(name)  # the process exited; its numbers are gone with it
        worker_samples = [s for name in self.workers for s in pages.get(name, [])]
        shard_samples = [s for name in shards for s in pages.get(name, [])]
        return worker_samples, shard_samples, missing

    async def _wait_released(self, client: TidalClient, job_id: str) -> None:
        """Waits until no member is still assigned to the job."""
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while True:
            members = await client.cluster()
            busy = [m.member_id for m in members if m.job_id == job_id and m.state == common_pb.MEMBER_STATE_ASSIGNED]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise DeadlineExceededError(
                    f"cluster: {', '.join(busy)} still assigned to job {job_id} {IDLE_TIMEOUT_S:.0f}s after it ended"
                )
            await asyncio.sleep(0.05)

    async def _wait_idle(self, client: TidalClient, workers: int, shards: int) -> None:
        """Waits until the coordinator sees enough idle workers and shards for a job."""
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while True:
            idle = [m for m in await client.cluster() if m.state == common_pb.MEMBER_STATE_IDLE]
            idle_workers = sum(m.role == common_pb.ROLE_WORKER for m in idle)
            idle_shards = sum(m.role == common_pb.ROLE_SHARD for m in idle)
            if idle_workers >= workers and idle_shards >= shards:
                return
            if any(not self.cluster.services[name].alive() for name in self.workers):
                await asyncio.to_thread(self.replace_exited_workers)
                continue
            if time.monotonic() > deadline:
                raise DeadlineExceededError(
                    f"cluster: {idle_workers} idle workers and {idle_shards} idle shards after "
                    f"{IDLE_TIMEOUT_S:.0f}s; the next job needs {workers} and {shards} "
                    f"(logs: {self.cluster.workdir / 'logs'})"
                )
            await asyncio.sleep(0.1)
