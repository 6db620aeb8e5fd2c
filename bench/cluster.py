"""A real tidal cluster for the bench (coordinator and shards as processes, via the launcher)
and the jobs it runs: bench drivers, or real workers."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Proc, module_cmd, open_window, procs, status_bytes
from tidal.client import TERMINAL_STATES, TidalClient
from tidal.launcher import LocalCluster

# Hidden width of the one-hidden-layer MLPs used as "a model of N parameters".
_HIDDEN = 2000


def mlp_of(numel: int) -> tuple[dict[str, Any], dict[str, Any], int]:
    """An MLP (model spec, dataset spec, exact parameter count) with about `numel` parameters:
    synthetic inputs of F features, one hidden layer of 2000, two classes."""
    features = max(1, round((numel - 3 * _HIDDEN - 2) / _HIDDEN))
    exact = features * _HIDDEN + 3 * _HIDDEN + 2
    model = {"name": "mlp", "args": {"hidden": [_HIDDEN]}}
    dataset = {"name": "synthetic", "args": {"num_samples": 64, "num_features": features, "num_classes": 2}}
    return model, dataset, exact


def driver_spec(
    numel: int, mode: str, workers: int, shards: int, codec: str = "none", optimizer: str = "sgd"
) -> tuple[dict[str, Any], int]:
    model, dataset, exact = mlp_of(numel)
    spec = {
        "name": f"bench-{mode}",
        "mode": mode,
        "model": model,
        "dataset": dataset,
        "optimizer": {"name": optimizer, "lr": 1e-3},
        "batch_size": 1,
        "steps": 1_000_000,
        "num_workers": workers,
        "num_shards": shards,
        "step_timeout_s": 60,
        "compression": {"codec": codec},
    }
    return spec, exact


@dataclass
class ShardStats:
    apply_s: float
    applies: float

    @property
    def mean_s(self) -> float:
        return self.apply_s / self.applies if self.applies else 0.0


class BenchCluster:
    """Coordinator + shards (no workers: the bench brings drivers or spawns workers)."""

    def __init__(
        self, workdir: Path, env: dict[str, str], num_shards: int, workers: int = 0, local: LocalCluster | None = None
    ) -> None:
        """`local`: a cluster of the caller's (services placed elsewhere, e.g. emulated hosts)."""
        self.workdir = workdir
        self.env = env
        self.cluster = local or LocalCluster(workdir, num_shards=num_shards, worker_slowdowns=(1.0,) * workers, env=env)
        self.logdir = workdir / "logs"
        # Optimizer steps of the last job `run_drivers` ran.
        self.last_apply = ShardStats(0.0, 0.0)
        # Bytes held by each shard at the end of that job.
        self.last_held: dict[str, float] = {}
        # Resident shared memory (workers' /dev/shm segments) of each shard then, in bytes.
        self.last_shared_resident: dict[str, int] = {}

    def __enter__(self) -> BenchCluster:
        self.cluster.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.__exit__(*exc)

    @property
    def address(self) -> str:
        return self.cluster.coordinator_address

    def ensure_workers(self, count: int) -> None:
        """Starts real workers until the cluster has `count` (for end-to-end jobs)."""
        names = []
        while (have := sum(n.startswith("worker-") for n in self.cluster.services)) < count:
            names.append(self.cluster.spawn_worker(f"worker-{have}").name)
        self.cluster.wait_ready(names)

    def pid(self, name: str) -> int:
        return self.cluster.services[name].process.pid

    def run_drivers(
        self,
        spec: dict[str, Any],
        driver_args: list[list[object]],
        timeout_s: float,
        window_s: float = 0.0,
        prefixes: Sequence[list[str]] = (),
    ) -> list[dict]:
        """Submits `spec`, starts one bench driver per entry of `driver_args` (with `window_s`,
        opens their common measuring window once all are ready), returns their results once
        all reported, then cancels the job (which releases the drivers). `prefixes`: what each
        driver's command runs behind (e.g. `ip netns exec` on emulated hosts)."""
        driver = module_cmd("bench.tidal_driver", "--coordinator", self.address)
        cmds = [[*(prefixes[i] if prefixes else []), *driver, *map(str, args)] for i, args in enumerate(driver_args)]
        with procs(cmds, self.env, self.logdir, f"driver-{spec['mode']}") as started:
            job_id = asyncio.run(self._submit(spec))
            try:
                deadline = time.monotonic() + timeout_s
                if window_s:
                    open_window(started, window_s, timeout_s)
                results = [p.result(max(1.0, deadline - time.monotonic())) for p in started]
                self.last_apply = self.apply_stats(job_id)
                shards = [n for n in self.cluster.services if n.startswith("shard-")]
                self.last_held = {n: self.held_bytes(n) for n in shards}
                # Before the job ends: the streams still have their shared-memory segments mapped.
                self.last_shared_resident = {n: status_bytes(self.pid(n), "RssShmem") for n in shards}
                return results
            finally:
                asyncio.run(self._cancel(job_id))
                _wait_exit(started, 15.0)

    async def _submit(self, spec: dict[str, Any]) -> str:
        async with TidalClient(self.address, self.cluster.client_security()) as client:
            return (await client.submit(spec)).job_id

    async def _cancel(self, job_id: str) -> None:
        async with TidalClient(self.address, self.cluster.client_security()) as client:
            status = await client.get(job_id)
            if status.state not in TERMINAL_STATES:
                await client.cancel(job_id)

    def _metrics(self, name: str) -> str:
        context = self.cluster.client_security().ssl_context()  # None in plaintext; HTTPS under TLS
        with urllib.request.urlopen(self.cluster.metrics_url(name), timeout=10, context=context) as page:
            return page.read().decode()

    def held_bytes(self, name: str) -> float:
        """Bytes of parameters and optimizer state the shard holds (its own gauge)."""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in self._metrics(name).splitlines()
            if line.startswith("tidal_shard_held_bytes{")
        )

    def apply_stats(self, job_id: str) -> ShardStats:
        """Time and count of the job's optimizer steps on every shard, from their /metrics."""
        total = count = 0.0
        label = f'tidal_job="{job_id}"'
        for name in self.cluster.services:
            if not name.startswith("shard-"):
                continue
            for line in self._metrics(name).splitlines():
                if label not in line:
                    continue
                if line.startswith("tidal_shard_apply_seconds_sum"):
                    total += float(line.rsplit(" ", 1)[1])
                elif line.startswith("tidal_shard_apply_seconds_count"):
                    count += float(line.rsplit(" ", 1)[1])
        return ShardStats(total, count)


def _wait_exit(started: list[Proc], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for p in started:
        try:
            p.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.process.kill()
