"""Issue 20's goals for sparse embedding tables (docs/embeddings.md), on real processes: a
coordinator, 2 shards and 2 workers (`tidal.launcher.LocalCluster`), jobs submitted as a user
would.

- **Traffic**: bytes per step of a table's rows (pull + push) for tables of 10^4 to 10^7 rows at
  a constant batch, as the workers' row client counted them (the gRPC messages it sent and
  received, `tidal_worker_embedding_bytes_total`), beside the unique ids per step
  (`tidal_worker_embedding_rows_pulled_total`). Goal: the bytes grow with the unique ids, not
  with the table: bytes per unique id at the largest table within 10% of the smallest's.
- **Speed**: samples/s of `ctr_mlp` with a 10^6-row table on the shards (rows pulled and pushed
  by id) against the same model with the table as a dense parameter (`dense_tables`: pulled and
  pushed whole every step, as any weight). Goal: >= 10x. Measured with the dense tensors through
  shared memory (tidal's default on one host, which favours the dense baseline) and, in a full
  run, on a second cluster with shared memory off (every tensor inline in gRPC, as between hosts).
- **Accuracy**: examples/ctr/hybrid.yaml (sync dense, async tables) against all-sync.yaml on
  the generated data: validation AUC (goal: hybrid within 0.005 of all-sync) and samples/s
  (goal: hybrid higher).

Every table is dim 16 (`DIM`): a shard creates a row on its first push only, and even with all
of a 10^7-row table trained, its rows cost 10^7 x 264 bytes (values, adagrad's state,
bookkeeping, index; core/embeddings/budget.py) = 2.6 GB over the 2 shards, within a 24 GiB
machine; the generated data stores no table (core/ctr/hashing.py), the workers' models none.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cluster import BenchCluster
from bench.results import Goal, Row, Settings
from bench.stats import Spread, ratios
from tidal.client import TERMINAL_STATES, TidalClient, load_spec_file
from tidal.config import ENV
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "ctr"
DIM = 16
BATCH_SIZE = 512
WORKERS = 2
SHARDS = 2
TRAFFIC_GOAL = Goal("<=", 1.1)
SPEED_GOAL = Goal(">=", 10.0)
AUC_GOAL = Goal("<=", 0.005)
FASTER_GOAL = Goal(">", 1.0)
# Bench clusters run on loopback without TLS (tidal.launcher).
PLAINTEXT = SecurityConfig()


@dataclass(frozen=True)
class EmbeddingSizes:
    traffic_rows: list[int]
    traffic_steps: int
    speed_rows: int
    hybrid_steps: int
    dense_steps: int
    # Steps of the examples' accuracy jobs (None: the examples' own).
    accuracy_steps: int | None
    # Also measure the speed with shared memory off (a second cluster: about 15 s to start).
    speed_over_grpc: bool = False


def ctr_job(name: str, rows: int, steps: int, dense: bool, seed: int) -> dict[str, Any]:
    """`ctr_mlp` with one table of `rows` rows (one categorical field of Zipf ids) and 4 dense
    features, SGD everywhere (the dense baseline's cheapest optimizer): on the shards by id, or
    (`dense`) as an nn.Embedding parameter of the model."""
    model_args: dict[str, Any] = {"fields": ["big"], "dim": DIM, "hidden": [32, 16]}
    spec: dict[str, Any] = {
        "name": name,
        "mode": "sync",
        "model": {"name": "ctr_mlp", "args": model_args},
        "dataset": {"name": "ctr_synthetic", "args": {"vocab_sizes": [rows], "num_samples": 100_000, "num_val": 1000}},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "batch_size": BATCH_SIZE,
        "steps": steps,
        "num_workers": WORKERS,
        "num_shards": SHARDS,
        "seed": seed,
        "eval_every": 0,
    }
    if dense:
        model_args.update(dense_tables=True, table_rows={"big": rows})
    else:
        table = {"name": "big", "num_embeddings": rows, "dim": DIM, "optimizer": {"name": "sgd", "lr": 0.05}}
        spec["embeddings"] = [{**table, "mode": "async"}]
    return spec


@dataclass(frozen=True)
class JobRun:
    status: coord_pb.JobStatus
    samples_per_s: float


async def _run_job(address: str, spec: dict[str, Any]) -> JobRun:
    """Runs `spec` to its end; samples/s between the first and the last progress report (start-up
    and the final evaluation excluded)."""
    async with TidalClient(address, PLAINTEXT, timeout_s=600) as client:
        job = await client.submit(spec)
        points: list[tuple[float, int]] = []
        async for status in client.watch(job.job_id):
            if status.samples and (not points or status.samples > points[-1][1]):
                points.append((time.perf_counter(), status.samples))
            if status.state in TERMINAL_STATES:
                break
        final = await client.get(job.job_id)
    if final.state != common_pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"job {spec['name']} ({final.job_id}) ended {final.state}: {final.message}")
    if len(points) < 2:
        raise RuntimeError(f"job {spec['name']}: {len(points)} progress report(s), too few to time it")
    (t0, s0), (t1, s1) = points[0], points[-1]
    return JobRun(final, (s1 - s0) / (t1 - t0))


def run_job(cluster: BenchCluster, spec: dict[str, Any]) -> JobRun:
    return asyncio.run(_run_job(cluster.address, spec))


def scrape(cluster: BenchCluster, service: str) -> str:
    with urllib.request.urlopen(cluster.cluster.metrics_url(service), timeout=10) as page:
        return page.read().decode()


def metric_sum(text: str, name: str, job_id: str) -> float:
    """The sum of every series of `name` labelled with the job (Prometheus text format)."""
    found = re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.MULTILINE)
    return sum(float(value) for labels, value in found if f'tidal_job="{job_id}"' in labels)


@dataclass(frozen=True)
class Traffic:
    bytes_per_step: float
    unique_per_step: float
    # The shards' own count of row payload (ids, rows, gradients), per step.
    shard_payload_per_step: float

    @property
    def bytes_per_unique_id(self) -> float:
        return self.bytes_per_step / self.unique_per_step


def traffic(cluster: BenchCluster, rows: int, steps: int, seed: int) -> Traffic:
    """One job with a table of `rows` rows; its row traffic per worker step, from the metrics."""
    status = run_job(cluster, ctr_job(f"bench-emb-traffic-{rows}", rows, steps, dense=False, seed=seed)).status
    workers = [scrape(cluster, f"worker-{i}") for i in range(WORKERS)]
    shards = [scrape(cluster, f"shard-{i}") for i in range(SHARDS)]
    job = status.job_id
    worker_steps = sum(metric_sum(t, "tidal_worker_steps_total", job) for t in workers)
    sent = sum(metric_sum(t, "tidal_worker_embedding_bytes_total", job) for t in workers)
    unique = sum(metric_sum(t, "tidal_worker_embedding_rows_pulled_total", job) for t in workers)
    payload = sum(metric_sum(t, "tidal_shard_embedding_bytes_total", job) for t in shards)
    if not worker_steps or not unique:
        raise RuntimeError(f"traffic job {job}: no steps or rows in the workers' metrics")
    return Traffic(sent / worker_steps, unique / worker_steps, payload / worker_steps)


def _power(rows: int) -> str:
    exponent = len(str(rows)) - 1
    return f"10^{exponent}" if rows == 10**exponent else f"{rows:,}"


def traffic_rows(cluster: BenchCluster, s: Settings, sizes: EmbeddingSizes) -> list[Row]:
    runs: dict[int, list[Traffic]] = {rows: [] for rows in sizes.traffic_rows}
    for r in range(s.reps):
        order = sizes.traffic_rows if r % 2 == 0 else list(reversed(sizes.traffic_rows))
        for rows in order:
            runs[rows].append(traffic(cluster, rows, sizes.traffic_steps, seed=7 + r))
    out = []
    for rows, measured in runs.items():
        dense_bytes = 2 * rows * DIM * 4  # what the whole table would carry each step, pulled and pushed
        out.append(
            Row(
                f"embeddings traffic, {_power(rows)} rows", "row bytes per step (pull + push)",
                Spread.of([m.bytes_per_step for m in measured]), digits=0,
                note=f"unique ids per step {Spread.of([m.unique_per_step for m in measured]).fmt(0)}; bytes per unique "
                f"id {Spread.of([m.bytes_per_unique_id for m in measured]).fmt(1)}; the shards' count of the payload "
                f"(ids, rows, gradients; the job's final evaluation's pulls included) "
                f"{Spread.of([m.shard_payload_per_step for m in measured]).fmt(0)} per step; "
                f"the same table as a dense parameter would carry {dense_bytes:,} bytes per step (its size x 2, "
                "computed, not measured)",
            )
        )  # fmt: skip
    small, large = sizes.traffic_rows[0], sizes.traffic_rows[-1]
    per_id_large = [m.bytes_per_unique_id for m in runs[large]]
    per_id_small = [m.bytes_per_unique_id for m in runs[small]]
    per_step_large = [m.bytes_per_step for m in runs[large]]
    per_step_small = [m.bytes_per_step for m in runs[small]]
    label = f"embeddings traffic, {_power(large)} against {_power(small)} rows"
    out += [
        Row(
            label, "bytes per unique id", Spread.of(per_id_large), f"{_power(small)} rows", Spread.of(per_id_small),
            ratios(per_id_large, per_id_small), goal=TRAFFIC_GOAL, digits=1,
            note=f"a table {large // small}x larger: bytes grow with the unique ids per batch, not with the table",
        ),
        Row(
            label, "row bytes per step", Spread.of(per_step_large), f"{_power(small)} rows", Spread.of(per_step_small),
            ratios(per_step_large, per_step_small), digits=0,
            note="the ratio follows the unique ids per step (Zipf ids: a larger vocabulary repeats fewer ids)",
        ),
    ]  # fmt: skip
    return out


def speed_rows(cluster: BenchCluster, s: Settings, sizes: EmbeddingSizes, transport: str) -> list[Row]:
    """`transport`: how the cluster moves dense tensors, for the row's name."""
    rows = sizes.speed_rows
    hybrid: list[float] = []
    dense: list[float] = []
    for r in range(s.reps):
        for side in ("hybrid", "dense") if r % 2 == 0 else ("dense", "hybrid"):
            steps = sizes.hybrid_steps if side == "hybrid" else sizes.dense_steps
            spec = ctr_job(f"bench-emb-speed-{side}", rows, steps, dense=side == "dense", seed=7 + r)
            (hybrid if side == "hybrid" else dense).append(run_job(cluster, spec).samples_per_s)
    return [
        Row(
            f"embeddings speed, {_power(rows)}-row table, {transport}", "samples/s, table on the shards by id",
            Spread.of(hybrid),
            "the table as a dense parameter", Spread.of(dense), ratios(hybrid, dense), goal=SPEED_GOAL, digits=0,
            note=f"ctr_mlp, dim {DIM}, hidden [32, 16], batch {BATCH_SIZE}, SGD, sync dense parameters, "
            f"{WORKERS} workers, {SHARDS} shards; the table async on the shards ({sizes.hybrid_steps} steps) or a "
            f"dense nn.Embedding pulled and pushed whole every step ({sizes.dense_steps} steps)",
        )
    ]  # fmt: skip


def accuracy_rows(cluster: BenchCluster, s: Settings, sizes: EmbeddingSizes) -> list[Row]:
    runs: dict[str, list[JobRun]] = {"hybrid": [], "all-sync": []}
    for r in range(s.reps):
        for name in ("hybrid", "all-sync") if r % 2 == 0 else ("all-sync", "hybrid"):
            spec = load_spec_file(EXAMPLES / f"{name}.yaml")
            spec["seed"] = spec["seed"] + r
            if sizes.accuracy_steps is not None:
                spec["steps"] = sizes.accuracy_steps
            run = run_job(cluster, spec)
            if run.status.val_metric != "auc":
                raise RuntimeError(f"{name}: the job reported {run.status.val_metric!r}, not auc")
            runs[name].append(run)
    hybrid_auc = [r.status.val_accuracy for r in runs["hybrid"]]
    sync_auc = [r.status.val_accuracy for r in runs["all-sync"]]
    hybrid_rate = [r.samples_per_s for r in runs["hybrid"]]
    sync_rate = [r.samples_per_s for r in runs["all-sync"]]
    shortfall = [b - a for a, b in zip(hybrid_auc, sync_auc, strict=True)]
    label = "embeddings accuracy, examples/ctr hybrid against all-sync"
    steps = sizes.accuracy_steps or load_spec_file(EXAMPLES / "hybrid.yaml")["steps"]
    return [
        Row(label, "validation AUC", Spread.of(hybrid_auc), "all-sync", Spread.of(sync_auc), digits=3,
            note=f"seeds 7 to {6 + s.reps}, {steps} steps, one pair per seed"),
        Row(label, "AUC shortfall (all-sync - hybrid, per seed)", Spread.of(shortfall), goal=AUC_GOAL, digits=3),
        Row(label, "samples/s", Spread.of(hybrid_rate), "all-sync", Spread.of(sync_rate),
            ratios(hybrid_rate, sync_rate), goal=FASTER_GOAL, digits=0),
    ]  # fmt: skip


def embeddings(s: Settings, env: dict[str, str], sizes: EmbeddingSizes, log: Callable[[str], None]) -> list[Row]:
    """The whole case on a cluster of its own: 2 shards, 2 real workers."""
    with BenchCluster(s.workdir / "embeddings", env, num_shards=SHARDS) as cluster:
        cluster.ensure_workers(WORKERS)
        log("embeddings: traffic")
        rows = traffic_rows(cluster, s, sizes)
        log("embeddings: speed")
        rows += speed_rows(cluster, s, sizes, "dense tensors through shared memory")
        log("embeddings: accuracy")
        rows += accuracy_rows(cluster, s, sizes)
    if sizes.speed_over_grpc:
        grpc_env = {**env, ENV["shared_memory"]: "off"}
        with BenchCluster(s.workdir / "embeddings-grpc", grpc_env, num_shards=SHARDS) as cluster:
            cluster.ensure_workers(WORKERS)
            log("embeddings: speed, shared memory off")
            rows += speed_rows(cluster, s, sizes, "every tensor inline in gRPC")
    return rows
