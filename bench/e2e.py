"""End to end: samples/s of a real job (real workers, real shards) in sync and async mode,
against the same training in one process; scaling efficiency for 1, 2 and 4 workers. And
the time a 2-worker job takes to reach a target validation loss, against the same training
under DistributedDataParallel (bench/ddp_train.py)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from bench.cluster import BenchCluster
from bench.procs import module_cmd, run_all
from bench.results import Row, Settings
from bench.stats import Spread, ratios
from tidal.client import TERMINAL_STATES, TidalClient
from tidal.compare.results import evals_of, first_reaching
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

# A small MLP (about 0.1M parameters) on synthetic data: compute and communication both matter.
MODEL = {"name": "mlp", "args": {"hidden": [256, 256]}}
DATASET = {"name": "synthetic", "args": {"num_samples": 8192, "num_features": 64, "num_classes": 4}}
BATCH_SIZE = 64
# Bench clusters run on loopback without TLS (tidal.launcher).
PLAINTEXT = SecurityConfig()


def job_spec(mode: str, workers: int, steps: int) -> dict[str, Any]:
    return {
        "name": f"bench-e2e-{mode}",
        "mode": mode,
        "model": MODEL,
        "dataset": DATASET,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "batch_size": BATCH_SIZE,
        "steps": steps,
        "num_workers": workers,
        "num_shards": 1,
    }


async def _throughput(address: str, spec: dict[str, Any]) -> float:
    """Samples/s between the first and the last progress report (start-up excluded)."""
    async with TidalClient(address, PLAINTEXT, timeout_s=300) as client:
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


# Time to target: the validation loss both sides must reach (this data set starts near 1.4 and
# levels off around 0.22-0.30 with 2 workers; single-process simulation: 0.32 at step 60), how
# often (in samples) rank 0 evaluates, and the most steps a run may take.
TARGET_VAL_LOSS = 0.35
EVAL_EVERY_STEPS = 10
TARGET_MAX_STEPS = 200
TARGET_WORKERS = 2


async def _run_to_end(address: str, spec: dict[str, Any]) -> coord_pb.JobStatus:
    async with TidalClient(address, PLAINTEXT, timeout_s=300) as client:
        job = await client.submit(spec)
        async for status in client.watch(job.job_id):
            if status.state in TERMINAL_STATES:
                break
        status = await client.get(job.job_id)
    if status.state != common_pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"time-to-target job {status.job_id} ended {status.state}: {status.message}")
    return status


def _tidal_to_target(address: str, mode: str) -> tuple[float, int]:
    """(seconds from the job's start to its first evaluation at or below the target, samples
    per worker by then)."""
    spec = job_spec(mode, TARGET_WORKERS, TARGET_MAX_STEPS)
    # Versions count optimizer steps: one per sync step, one per push in async. Evaluate after
    # the same number of samples either way.
    per_version = TARGET_WORKERS if mode == "sync" else 1
    spec["eval_every"] = EVAL_EVERY_STEPS * TARGET_WORKERS // per_version
    status = asyncio.run(_run_to_end(address, spec))
    target = first_reaching(evals_of(status), TARGET_VAL_LOSS)
    if target is None:
        best = min((e.val_loss for e in evals_of(status)), default=float("nan"))
        raise RuntimeError(f"{mode}: validation loss {TARGET_VAL_LOSS} not reached in {TARGET_MAX_STEPS} steps "
                           f"(best {best:.3f})")  # fmt: skip
    return target.elapsed_s, target.version * per_version * spec["batch_size"] // TARGET_WORKERS


def _ddp_to_target(cluster: BenchCluster) -> tuple[float, int, float]:
    """(seconds to the target, samples per worker by then, mean step seconds) under DDP."""
    init = cluster.logdir / f"ddp-{uuid.uuid4().hex[:8]}"
    spec = job_spec("sync", TARGET_WORKERS, TARGET_MAX_STEPS)
    spec["eval_every"] = EVAL_EVERY_STEPS
    cmds = [
        module_cmd("bench.ddp_train", "--rank", r, "--world-size", TARGET_WORKERS, "--init-file", init,
                   "--spec", json.dumps(spec), "--target", TARGET_VAL_LOSS, "--max-steps", TARGET_MAX_STEPS)
        for r in range(TARGET_WORKERS)
    ]  # fmt: skip
    try:
        result = run_all(cmds, cluster.env, cluster.logdir, "ddp", 300)[0]
    finally:
        init.unlink(missing_ok=True)
    reached = result["reached"]
    if reached is None:
        raise RuntimeError(f"DDP: validation loss {TARGET_VAL_LOSS} not reached in {TARGET_MAX_STEPS} steps")
    return reached["target_s"], reached["steps"] * spec["batch_size"], result["step_s"]


def time_to_target(cluster: BenchCluster, s: Settings) -> list[Row]:
    """tidal sync and async (2 real workers, 1 shard) against DDP over gloo (2 processes):
    seconds until the validation loss first reaches the target, interleaved per repetition."""
    cluster.ensure_workers(TARGET_WORKERS)
    tidal: dict[str, list[tuple[float, int]]] = {"sync": [], "async": []}
    ddp: list[tuple[float, int, float]] = []
    for r in range(s.reps):
        for side in ("tidal", "ddp") if r % 2 == 0 else ("ddp", "tidal"):
            if side == "ddp":
                ddp.append(_ddp_to_target(cluster))
                continue
            for mode, runs in tidal.items():
                runs.append(_tidal_to_target(cluster.address, mode))
    ddp_s = [x[0] for x in ddp]
    rows = []
    for mode, runs in tidal.items():
        secs = [x[0] for x in runs]
        rows.append(
            Row(
                f"time to target, {TARGET_WORKERS} workers, {mode}", f"seconds to validation loss <= {TARGET_VAL_LOSS}",
                Spread.of(secs), f"DDP (gloo), {TARGET_WORKERS} processes", Spread.of(ddp_s), ratios(secs, ddp_s),
                note=f"samples per worker by then: tidal {Spread.of([x[1] for x in runs]).fmt(0)}, DDP "
                f"{Spread.of([x[1] for x in ddp]).fmt(0)}; DDP step {Spread.of([x[2] for x in ddp]).fmt(1, 1e3)} ms; "
                "both clocks start before the model and data are built (tidal: when the job's workers are "
                "assigned; DDP: after init_process_group), evaluations every "
                f"{EVAL_EVERY_STEPS * TARGET_WORKERS * BATCH_SIZE} samples included",
                digits=2,
            )
        )  # fmt: skip
    return rows
