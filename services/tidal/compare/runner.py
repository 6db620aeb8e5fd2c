"""Runs every job of a comparison, one after the other, on one local cluster.

Ranks follow the order in which workers registered with the coordinator, so the runner
starts worker processes one at a time: the process with `worker_slowdowns[r]` becomes rank
r of every job. After a run that kills a worker, the workers from that rank on are replaced
in order, so the next run has the same machines at the same ranks.

Every wait is bounded: a job by `job_timeout_s` (then cancelled), the cluster's readiness by
`IDLE_TIMEOUT_S`. The caller owns the cluster and stops it (also on Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time

from rich.console import Console

from tidal.client import TidalClient
from tidal.compare.metrics import Sample, for_job, scrape
from tidal.compare.results import RunResult, add_metrics, from_status
from tidal.compare.spec import CompareSpec, PlannedRun
from tidal.core.errors import DeadlineExceededError, TidalError
from tidal.launcher import LocalCluster
from tidal.progress import follow_job
from tidal.v1 import common_pb2 as common_pb

# Longest wait for the job's members to return to IDLE (after a job) or for a replacement
# worker to register; both normally take well under a second.
IDLE_TIMEOUT_S = 60.0
# Longest wait for a worker killed by its job spec to be gone, and for SIGTERM to stop one.
EXIT_TIMEOUT_S = 15.0


class CompareRunner:
    def __init__(self, spec: CompareSpec, cluster: LocalCluster, console: Console) -> None:
        self.spec = spec
        self.cluster = cluster
        self.console = console
        self.slowdowns = list(spec.cluster.worker_slowdowns)
        self.workers: list[str] = []  # process names, in registration (= rank) order
        self._spawned = 0

    def start_workers(self) -> None:
        """Starts the worker processes one by one, so that registration order is rank order."""
        for rank in range(len(self.slowdowns)):
            self.workers.append(self._spawn(rank))

    def _spawn(self, rank: int) -> str:
        name = f"worker-{rank}" if self._spawned < len(self.slowdowns) else f"worker-{rank}-{self._spawned}"
        self._spawned += 1
        self.cluster.spawn_worker(name, self.slowdowns[rank])
        self.cluster.wait_ready([name])
        return name

    def processes(self) -> dict[str, tuple[str, float]]:
        """member id -> (process name, slowdown) of the current workers."""
        return {
            self.cluster.services[name].info["member_id"]: (name, self.slowdowns[rank])
            for rank, name in enumerate(self.workers)
        }

    async def run(self, planned: PlannedRun) -> RunResult:
        """Submits one job, follows it with a progress bar, and collects its numbers."""
        spec = self.spec
        async with TidalClient(self.cluster.coordinator_address) as client:
            await self._wait_idle(client, planned)
            processes = self.processes()
            job = await client.submit(planned.spec_dict)
            state = message = None
            try:
                final = await asyncio.wait_for(follow_job(client, job.job_id, self.console), spec.job_timeout_s)
            except TimeoutError:
                with contextlib.suppress(TidalError):  # it may have ended meanwhile
                    await client.cancel(job.job_id)
                final = await client.get(job.job_id)
                state, message = "timed out", f"still running after {spec.job_timeout_s:.0f}s; cancelled"
            result = from_status(planned.label, planned.kill, final, spec.target_val_loss, processes, state, message)
            # The members replace a job's series only when their next job starts: scrape now,
            # once they are back to IDLE (so their last step has been counted).
            await self._wait_idle(client, planned, exclude_killed=planned.kill)
        if not planned.kill:
            workers, shards = await asyncio.to_thread(self._scrape, job.job_id)
            add_metrics(result, workers, shards)
        return result

    def _scrape(self, job_id: str) -> tuple[list[Sample], list[Sample]]:
        shards = [name for name in self.cluster.services if name.startswith("shard-")]
        worker_samples = [s for name in self.workers for s in for_job(scrape(self.cluster.metrics_url(name)), job_id)]
        shard_samples = [s for name in shards for s in for_job(scrape(self.cluster.metrics_url(name)), job_id)]
        return worker_samples, shard_samples

    def replace_killed_workers(self) -> list[str]:
        """After a run with a kill: replaces the dead worker and every later rank, in order.

        Returns the names of the processes that died.
        """
        kill = self.spec.kill
        if kill is None:
            return []
        victim = self.cluster.services[self.workers[kill.rank]]
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while victim.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        dead = [rank for rank, name in enumerate(self.workers) if not self.cluster.services[name].alive()]
        if not dead:
            return []
        first = dead[0]
        for name in self.workers[first:]:
            self._stop(name)
        gone = [self.workers[rank] for rank in dead]
        for rank in range(first, len(self.workers)):
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

    async def _wait_idle(self, client: TidalClient, planned: PlannedRun, exclude_killed: bool = False) -> None:
        """Waits until the coordinator sees enough idle workers and shards for the job."""
        need_workers = planned.spec.num_workers - (1 if exclude_killed else 0)
        need_shards = planned.spec.num_shards
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while True:
            members = await client.cluster()
            idle = [m for m in members if m.state == common_pb.MEMBER_STATE_IDLE]
            workers = sum(m.role == common_pb.ROLE_WORKER for m in idle)
            shards = sum(m.role == common_pb.ROLE_SHARD for m in idle)
            if workers >= need_workers and shards >= need_shards:
                return
            if time.monotonic() > deadline:
                raise DeadlineExceededError(
                    f"cluster: {workers} idle workers and {shards} idle shards after {IDLE_TIMEOUT_S:.0f}s; "
                    f"job {planned.label!r} needs {need_workers} and {need_shards} (logs: {self.cluster.workdir})"
                )
            await asyncio.sleep(0.1)
