"""End to end: samples/s of a real job (real workers, real shards) in sync and async mode,
against the same training in one process; scaling efficiency for 1, 2 and 4 workers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bench.cluster import BenchCluster
from bench.procs import module_cmd, run_all
from bench.results import Row, Settings
from bench.stats import Spread
from tidal.client import TERMINAL_STATES, TidalClient
from tidal.v1 import common_pb2 as common_pb

# A small MLP (about 0.1M parameters) on synthetic data: compute and communication both matter.
MODEL = {"name": "mlp", "args": {"hidden": [256, 256]}}
DATASET = {"name": "synthetic", "args": {"num_samples": 8192, "num_features": 64, "num_classes": 4}}


def job_spec(mode: str, workers: int, steps: int) -> dict[str, Any]:
    return {
        "name": f"bench-e2e-{mode}",
        "mode": mode,
        "model": MODEL,
        "dataset": DATASET,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "batch_size": 64,
        "steps": steps,
        "num_workers": workers,
        "num_shards": 1,
    }


async def _throughput(address: str, spec: dict[str, Any]) -> float:
    """Samples/s between the first and the last progress report (start-up excluded)."""
    async with TidalClient(address, timeout_s=300) as client:
        job = await client.submit(spec)
        points: list[tuple[float, int]] = []
        state = job.state
        async for status in client.watch(job.job_id):
            if status.samples:
                points.append((time.perf_counter(), status.samples))
            state = status.state
            if state in TERMINAL_STATES:
                break
        if state != common_pb.JOB_STATE_SUCCEEDED:
            raise RuntimeError(f"end-to-end job {job.job_id} ended {state}: {status.message}")
    (t0, s0), (t1, s1) = points[0], points[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 else float("nan")


def end_to_end(cluster: BenchCluster, s: Settings, worker_counts: list[int], steps: int) -> list[Row]:
    """Runs on the bench's cluster (its idle shards), adding real workers as needed; a job
    takes `workers` of the idle workers and one shard."""
    single: list[float] = []
    figures: dict[tuple[str, int], list[float]] = {}
    base_spec = json.dumps(job_spec("sync", 1, steps))
    for workers in worker_counts:
        cluster.ensure_workers(workers)
        for r in range(s.reps):
            (res,) = run_all([module_cmd("bench.single_process", base_spec, steps)], cluster.env, cluster.logdir,
                             "single", 300)  # fmt: skip
            single.append(res["samples_per_s"])
            for mode in ("sync", "async") if r % 2 == 0 else ("async", "sync"):
                rate = asyncio.run(_throughput(cluster.address, job_spec(mode, workers, steps)))
                figures.setdefault((mode, workers), []).append(rate)
    one = Spread.of(single)
    rows = [Row("end to end, one process", "samples/s (no parameter server)", one, digits=0)]
    for (mode, workers), rates in sorted(figures.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        efficiency = [x / (workers * one.median) for x in rates]
        rows.append(
            Row(
                f"end to end, {workers} worker{'s' * (workers > 1)}, {mode}", "samples/s", Spread.of(rates),
                "one process x workers", Spread.of([x * workers for x in single]), Spread.of(efficiency),
                note="ratio = scaling efficiency", digits=0,
            )
        )  # fmt: skip
    return rows
