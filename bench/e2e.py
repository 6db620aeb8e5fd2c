"""End to end: samples/s of a real job (real workers, real shards) in sync and async mode,
against the same training in one process; scaling efficiency for 1, 2 and 4 workers. And
the time a 2-worker job takes to reach a target validation loss, against the same training
under DistributedDataParallel (bench/ddp_train.py)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.cluster import BenchCluster
from bench.procs import module_cmd, run_all
from bench.results import Row, Settings
from bench.stats import Spread, ratios
from tidal.client import TERMINAL_STATES, TidalClient
from tidal.compare.results import evals_of, first_reaching
from tidal.core.plan import job_dataset, job_model
from tidal.core.spec import parse_job_spec
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

# A small MLP (about 0.1M parameters) on synthetic data: compute and communication both matter.
MODEL = {"name": "mlp", "args": {"hidden": [256, 256]}}
DATASET = {"name": "synthetic", "args": {"num_samples": 8192, "num_features": 64, "num_classes": 4}}
BATCH_SIZE = 64
# Between hosts (issue 18): a 5.4M-parameter MLP on the same data. With lr 0.05 its validation
# loss jumps (1.0 after 0.42 in a single-process run) and async missed 0.35 in 200 steps; with
# 0.02 single-process batches of 128 stay below 0.35 from step 50 on, of 64 from step 70, but
# tidal's async with 2 workers (400 updates of 64 samples, on 2 loaded CPUs) got no lower than
# 0.366, and 0.414 against a target of 0.40: the target is 0.45, which single-process runs
# reach by step 40 with either batch, and async is given 300 steps.
WIDE_LR = 0.02
WIDE_TARGET = 0.45
WIDE_MAX_STEPS = 300
WIDE_MODEL = {"name": "mlp", "args": {"hidden": [2560, 2048]}}
# Bench clusters run on loopback without TLS (tidal.launcher).
PLAINTEXT = SecurityConfig()


def job_spec(mode: str, workers: int, steps: int, model: dict[str, Any] = MODEL) -> dict[str, Any]:
    return {
        "name": f"bench-e2e-{mode}",
        "mode": mode,
        "model": model,
        "dataset": DATASET,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "batch_size": BATCH_SIZE,
        "steps": steps,
        "num_workers": workers,
        "num_shards": 1,
    }


@dataclass(frozen=True)
class TargetRun:
    """What a time-to-target comparison trains: the model, how many workers and shards, the
    validation loss both sides must reach, and the most steps a run may take."""

    model: dict[str, Any] = field(default_factory=lambda: MODEL)
    workers: int = 2
    shards: int = 1
    # This data set starts near 1.4 and levels off around 0.22-0.30 with 2 workers
    # (single-process simulation of the 0.1M-parameter MLP: 0.32 at step 60).
    target: float = 0.35
    max_steps: int = 200
    # SGD's learning rate (momentum 0.9), tuned for sync and kept for async.
    lr: float = 0.05

    def spec(self, mode: str) -> dict[str, Any]:
        spec = {**job_spec(mode, self.workers, self.max_steps, self.model), "num_shards": self.shards}
        spec["optimizer"] = {**spec["optimizer"], "lr": self.lr}
        return spec


def wide_run(workers: int) -> TargetRun:
    """WIDE_MODEL to WIDE_TARGET with `workers` workers and 2 shards (between hosts)."""
    return TargetRun(WIDE_MODEL, workers, 2, WIDE_TARGET, WIDE_MAX_STEPS, WIDE_LR)


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


# Time to target: how often (in steps of every worker) rank 0 evaluates.
EVAL_EVERY_STEPS = 10


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


def _tidal_to_target(address: str, mode: str, run: TargetRun) -> tuple[float, int]:
    """(seconds from the job's start to its first evaluation at or below the target, samples
    per worker by then)."""
    spec = run.spec(mode)
    # Versions count optimizer steps: one per sync step, one per push in async. Evaluate after
    # the same number of samples either way.
    per_version = run.workers if mode == "sync" else 1
    spec["eval_every"] = EVAL_EVERY_STEPS * run.workers // per_version
    status = asyncio.run(_run_to_end(address, spec))
    target = first_reaching(evals_of(status), run.target)
    if target is None:
        best = min((e.val_loss for e in evals_of(status)), default=float("nan"))
        raise RuntimeError(f"{mode}: validation loss {run.target} not reached in {run.max_steps} steps "
                           f"(best {best:.3f})")  # fmt: skip
    return target.elapsed_s, target.version * per_version * spec["batch_size"] // run.workers


def _ddp_to_target(
    cluster: BenchCluster, run: TargetRun, prefixes: Sequence[list[str]] = ()
) -> tuple[float, int, float]:
    """(seconds to the target, samples per worker by then, mean step seconds) under DDP;
    `prefixes`: what each rank's command runs behind (e.g. `ip netns exec` on emulated hosts)."""
    init = cluster.logdir / f"ddp-{uuid.uuid4().hex[:8]}"
    spec = run.spec("sync")
    spec["eval_every"] = EVAL_EVERY_STEPS
    cmds = [
        [*(prefixes[r] if prefixes else []),
         *module_cmd("bench.ddp_train", "--rank", r, "--world-size", run.workers, "--init-file", init,
                     "--spec", json.dumps(spec), "--target", run.target, "--max-steps", run.max_steps)]
        for r in range(run.workers)
    ]  # fmt: skip
    try:
        result = run_all(cmds, cluster.env, cluster.logdir, "ddp", 600)[0]
    finally:
        init.unlink(missing_ok=True)
    reached = result["reached"]
    if reached is None:
        raise RuntimeError(f"DDP: validation loss {run.target} not reached in {run.max_steps} steps")
    return reached["target_s"], reached["steps"] * spec["batch_size"], result["step_s"]


def time_to_target(
    cluster: BenchCluster,
    s: Settings,
    run: TargetRun = TargetRun(),
    where: str = "",
    ddp_prefixes: Sequence[list[str]] = (),
) -> list[Row]:
    """tidal sync and async (real workers and shards) against DDP over gloo (one process per
    worker): seconds until the validation loss first reaches the target, interleaved per
    repetition. `where`: what the case's name starts with (e.g. the emulated link)."""
    cluster.ensure_workers(run.workers)
    tidal: dict[str, list[tuple[float, int]]] = {"sync": [], "async": []}
    ddp: list[tuple[float, int, float]] = []
    for r in range(s.reps):
        for side in ("tidal", "ddp") if r % 2 == 0 else ("ddp", "tidal"):
            if side == "ddp":
                ddp.append(_ddp_to_target(cluster, run, ddp_prefixes))
                continue
            for mode, runs in tidal.items():
                runs.append(_tidal_to_target(cluster.address, mode, run))
    ddp_s = [x[0] for x in ddp]
    what = f"{run.workers} workers"
    if run.model != MODEL or run.shards > 1:
        what += f", {_params_text(run)} params, {run.shards} shard{'s' * (run.shards > 1)}"
    rows = []
    for mode, runs in tidal.items():
        secs = [x[0] for x in runs]
        rows.append(
            Row(
                f"{where}time to target, {what}, {mode}", f"seconds to validation loss <= {run.target}",
                Spread.of(secs), f"DDP (gloo), {run.workers} processes", Spread.of(ddp_s), ratios(secs, ddp_s),
                note=f"samples per worker by then: tidal {Spread.of([x[1] for x in runs]).fmt(0)}, DDP "
                f"{Spread.of([x[1] for x in ddp]).fmt(0)}; DDP step {Spread.of([x[2] for x in ddp]).fmt(1, 1e3)} ms; "
                "both clocks start before the model and data are built (tidal: when the job's workers are "
                "assigned; DDP: after init_process_group), evaluations every "
                f"{EVAL_EVERY_STEPS * run.workers * BATCH_SIZE} samples included",
                digits=2,
            )
        )  # fmt: skip
    return rows


def _params_text(run: TargetRun) -> str:
    spec = parse_job_spec(json.dumps(run.spec("sync")))
    numel = sum(p.numel() for p in job_model(spec, job_dataset(spec, model_modules=None)).parameters())
    return f"{numel / 1e6:.1f}M"
