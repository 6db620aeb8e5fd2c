"""The numbers of one run: from the job's final status and its members' /metrics pages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tidal.client import job_state_name
from tidal.compare.metrics import Sample, bucket_counts, histogram_quantile, sum_by, summed_buckets, total
from tidal.v1 import coordinator_pb2 as coord_pb

STEP_HISTOGRAM = "tidal_worker_step_duration_seconds"
PHASE_HISTOGRAM = "tidal_worker_step_seconds"
STALENESS_HISTOGRAM = "tidal_shard_update_staleness"


@dataclass(frozen=True)
class Eval:
    elapsed_s: float  # since the job started running
    version: int
    val_loss: float
    val_accuracy: float


@dataclass(frozen=True)
class WorkerResult:
    rank: int
    member_id: str
    process: str  # the local cluster's name for the worker process
    slowdown: float  # the process' --slowdown: how much slower its "machine" is
    step: int = 0  # steps done, from the job status
    samples: float | None = None  # tidal_worker_samples_total
    samples_per_s: float | None = None  # samples / the job's wall time
    # Mean seconds per step in each phase (compute, injected, push, barrier, pull).
    phase_means: dict[str, float] = field(default_factory=dict)
    step_p50_s: float | None = None
    step_p90_s: float | None = None


@dataclass(frozen=True)
class Target:
    """When a run first reached the target validation loss."""

    elapsed_s: float
    version: int
    val_loss: float


@dataclass
class RunResult:
    label: str
    mode: str
    kill: bool  # the run with a worker killed on purpose
    job_id: str
    state: str  # succeeded, failed, cancelled, or "timed out"
    message: str
    wall_s: float
    samples: int
    version: int
    target_version: int
    staleness_mean: float
    staleness_max: int
    updates_applied: int
    updates_rejected: int
    final_val_loss: float | None
    final_val_accuracy: float | None
    evals: list[Eval]
    target: Target | None
    workers: list[WorkerResult]
    # From the members' /metrics pages; absent for runs with a kill (the killed page is gone).
    step_p50_s: float | None = None
    step_p99_s: float | None = None
    samples_per_s: float | None = None
    # Everything the workers sent and received: the Exchange streams plus the embedding rows'
    # RPCs (training steps' and evaluations'); row_bytes is the rows' part of it.
    wire_bytes: float | None = None
    row_bytes: float | None = None
    # Observations per staleness bucket: (upper bound in versions, count), summed over shards.
    staleness_buckets: list[tuple[float, float]] = field(default_factory=list)
    # Consistency settings in force at the end (max over shards; mode auto tunes them) and how
    # many times mode auto's tuner changed them (summed over shards).
    settings: dict[str, float] = field(default_factory=dict)
    auto_decisions: float | None = None
    # Processes whose /metrics page could not be read after the run.
    missing_metrics: list[str] = field(default_factory=list)
    # Runs with a kill: whether the doomed worker's process really exited (the job may end first).
    killed: bool | None = None
    # Worker processes that had exited after the run and were replaced before the next one.
    replaced_workers: list[str] = field(default_factory=list)
    kill_rank: int | None = None
    kill_at_step: int | None = None
    # What final_val_accuracy measures: the objective's metric (accuracy, skill, a loss's name).
    val_metric: str = "accuracy"

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    def outcome(self) -> str:
        """One line: "succeeded at version 300" or "failed at version 21: worker ... was lost"."""
        head = f"{self.state} at version {self.version}"
        if self.killed is False:
            step = next((w.step for w in self.workers if w.rank == self.kill_rank), None)
            head += (
                f" (rank {self.kill_rank} was not killed: the job ended at its step {step},"
                f" before step {self.kill_at_step})"
            )
        return f"{head}: {self.message}" if self.message else head


def first_reaching(evals: Sequence[Eval], target_val_loss: float) -> Target | None:
    """The first evaluation (in time) whose validation loss is at or below the target."""
    for e in sorted(evals, key=lambda e: (e.elapsed_s, e.version)):
        if e.val_loss <= target_val_loss:
            return Target(e.elapsed_s, e.version, e.val_loss)
    return None


def evals_of(status: coord_pb.JobStatus) -> list[Eval]:
    return [Eval(e.elapsed_s, e.version, e.val_loss, e.val_accuracy) for e in status.evals]


def from_status(
    label: str,
    kill: bool,
    status: coord_pb.JobStatus,
    target_val_loss: float,
    processes: dict[str, tuple[str, float]],
    state: str | None = None,
    message: str | None = None,
) -> RunResult:
    """A run's result from its final JobStatus; `processes` maps member id -> (process name, slowdown)."""
    evals = evals_of(status)
    wall = status.finished_at - status.started_at if status.finished_at and status.started_at else 0.0
    workers = [
        WorkerResult(w.rank, w.member_id, *processes.get(w.member_id, ("?", 1.0)), w.step)
        for w in sorted(status.workers, key=lambda w: w.rank)
    ]
    return RunResult(
        label=label,
        mode=status.mode,
        kill=kill,
        job_id=status.job_id,
        state=state or job_state_name(status.state),
        message=status.message if message is None else message,
        wall_s=wall,
        samples=status.samples,
        version=status.version,
        target_version=status.target_version,
        staleness_mean=status.staleness_mean,
        staleness_max=status.staleness_max,
        updates_applied=status.updates_applied,
        updates_rejected=status.updates_rejected,
        final_val_loss=status.val_loss if status.HasField("val_loss") else None,
        final_val_accuracy=status.val_accuracy if status.HasField("val_accuracy") else None,
        val_metric=status.val_metric or "accuracy",
        evals=evals,
        target=first_reaching(evals, target_val_loss),
        workers=workers,
    )


def add_metrics(result: RunResult, worker_samples: list[Sample], shard_samples: list[Sample]) -> None:
    """Fills in what comes from /metrics; the samples must already be filtered to the run's job."""
    steps = summed_buckets(worker_samples, STEP_HISTOGRAM)
    result.step_p50_s = histogram_quantile(0.5, steps)
    result.step_p99_s = histogram_quantile(0.99, steps)
    per_worker = sum_by(worker_samples, "tidal_worker_samples_total", "worker")
    wall = result.wall_s
    old_workers, result.workers = result.workers, []
    for w in old_workers:
        own = [s for s in worker_samples if s.labels.get("worker") == w.member_id]
        own_steps = summed_buckets(own, STEP_HISTOGRAM)
        result.workers.append(
            WorkerResult(
                w.rank,
                w.member_id,
                w.process,
                w.slowdown,
                w.step,
                per_worker.get(w.member_id),
                per_worker[w.member_id] / wall if w.member_id in per_worker and wall > 0 else None,
                phase_means(own),
                histogram_quantile(0.5, own_steps),
                histogram_quantile(0.9, own_steps),
            )
        )
    result.samples_per_s = sum(per_worker.values()) / wall if per_worker and wall > 0 else None
    row_series = ("tidal_worker_embedding_bytes_total", "tidal_worker_embedding_eval_bytes_total")
    if any(s.name in row_series for s in worker_samples):  # a job without tables has no row series
        result.row_bytes = sum(total(worker_samples, name) for name in row_series)
    result.wire_bytes = (
        total(worker_samples, "tidal_worker_sent_bytes_total")
        + total(worker_samples, "tidal_worker_received_bytes_total")
        + (result.row_bytes or 0.0)
    )
    result.staleness_buckets = bucket_counts(summed_buckets(shard_samples, STALENESS_HISTOGRAM))
    settings: dict[str, float] = {}
    for sample in shard_samples:
        if sample.name == "tidal_shard_consistency_setting":
            name = sample.labels.get("setting", "")
            settings[name] = max(settings.get(name, sample.value), sample.value)
    result.settings = settings
    if any(s.name == "tidal_shard_auto_decisions_total" for s in shard_samples):
        result.auto_decisions = total(shard_samples, "tidal_shard_auto_decisions_total")


def to_jsonable(value: object) -> object:
    """Infinite bucket bounds as "+Inf" (JSON has no infinity), recursively."""
    if isinstance(value, float) and value == float("inf"):
        return "+Inf"
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def dumps(value: object) -> str:
    return json.dumps(to_jsonable(value), indent=2, allow_nan=False)


def phase_means(samples: list[Sample]) -> dict[str, float]:
    """Mean seconds per step of each phase, from one worker's phase histogram (sum / count)."""
    sums = sum_by(samples, f"{PHASE_HISTOGRAM}_sum", "phase")
    counts = sum_by(samples, f"{PHASE_HISTOGRAM}_count", "phase")
    return {phase: sums[phase] / counts[phase] for phase in sums if counts.get(phase)}


def from_jsonable(value: object) -> object:
    """The inverse of `to_jsonable` for bucket bounds: "+Inf" back to infinity."""
    return float("inf") if value == "+Inf" else value


def result_from_dict(data: dict[str, Any]) -> RunResult:
    """A RunResult back from `asdict` output read from JSON (a run file of an earlier invocation)."""
    fields = dict(data)
    fields["evals"] = [Eval(**e) for e in data["evals"]]
    fields["target"] = Target(**data["target"]) if data["target"] is not None else None
    fields["workers"] = [WorkerResult(**w) for w in data["workers"]]
    fields["staleness_buckets"] = [(float(from_jsonable(le)), float(n)) for le, n in data["staleness_buckets"]]  # type: ignore[arg-type]
    return RunResult(**fields)
