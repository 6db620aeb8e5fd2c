"""A worker's Prometheus metrics, labelled by job, mode and worker id."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidal.transport.metrics import LATENCY_BUCKETS

LABELS = ["tidal_job", "mode", "worker"]
PHASES = ("compute", "push", "barrier", "pull", "injected")


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds spent in each phase of one exchange with the shards."""

    push: float = 0.0  # sending the gradient until the shard's ack
    barrier: float = 0.0  # ack until the next parameters start arriving (the sync barrier)
    pull: float = 0.0  # receiving the parameter chunks

    @staticmethod
    def slowest(times: list[PhaseTimes]) -> PhaseTimes:
        """The step waits for the slowest shard in each phase."""
        return PhaseTimes(
            max((t.push for t in times), default=0.0),
            max((t.barrier for t in times), default=0.0),
            max((t.pull for t in times), default=0.0),
        )


class WorkerMetrics:
    """The metric families of one worker process; `for_job` binds one job's labels."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.phase = Histogram(
            "tidal_worker_step_seconds",
            "Time per step in each phase (compute, push, barrier, pull, injected), in seconds.",
            [*LABELS, "phase"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "tidal_worker_step_duration_seconds", "Wall time of whole steps, in seconds.", LABELS,
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.samples = Counter("tidal_worker_samples_total", "Training samples processed.", LABELS, registry=registry)
        self.steps = Counter("tidal_worker_steps_total", "Steps completed.", LABELS, registry=registry)
        self.loss = Gauge("tidal_worker_loss", "Training loss of the latest step.", LABELS, registry=registry)
        self.step = Gauge("tidal_worker_step", "Steps completed in the current job.", LABELS, registry=registry)
        self.param_version = Gauge(
            "tidal_worker_param_version", "Lowest parameter version received from any shard.", LABELS, registry=registry
        )
        self.sent = Counter("tidal_worker_sent_bytes_total", "Data-plane bytes sent.", LABELS, registry=registry)
        self.received = Counter(
            "tidal_worker_received_bytes_total", "Data-plane bytes received.", LABELS, registry=registry
        )
        self.saved = Counter(
            "tidal_worker_wire_saved_bytes_total", "Gradient bytes that compression kept off the wire.", LABELS,
            registry=registry,
        )  # fmt: skip
        self.injected = Counter(
            "tidal_worker_injected_delay_seconds_total", "Straggler delay slept on purpose, in seconds.", LABELS,
            registry=registry,
        )  # fmt: skip
        self.slowdown = Gauge(
            "tidal_worker_slowdown",
            "Straggler factor of this worker's current job: --slowdown times the job spec's stragglers entry for "
            "its rank (1 = full speed).",
            ["worker"],
            registry=registry,
        )  # fmt: skip
        # Embedding tables (docs/embeddings.md): per table, what each training step read and wrote.
        table_labels = [*LABELS, "table"]
        self.rows_pulled = Counter(
            "tidal_worker_embedding_rows_pulled_total",
            "Embedding rows pulled for training steps (the unique ids of each step's batch).", table_labels,
            registry=registry,
        )  # fmt: skip
        self.rows_pushed = Counter(
            "tidal_worker_embedding_rows_pushed_total",
            "Embedding row gradients pushed (one per unique id a step read).", table_labels, registry=registry,
        )  # fmt: skip
        self.rows_unique_ratio = Gauge(
            "tidal_worker_embedding_unique_ratio",
            "Unique ids over ids read in the latest step (1: no id repeated in the batch).", table_labels,
            registry=registry,
        )  # fmt: skip
        self.rows_bytes = Counter(
            "tidal_worker_embedding_bytes_total",
            "gRPC message bytes of training steps' row pulls and pushes (requests and replies: ids, rows, "
            "gradients).",
            table_labels, registry=registry,
        )  # fmt: skip
        # Evaluation's pulls (forwards under no_grad), apart from the training steps'.
        self.eval_rows_pulled = Counter(
            "tidal_worker_embedding_eval_rows_pulled_total",
            "Embedding rows pulled by evaluations (not counted in the training steps' rows).", table_labels,
            registry=registry,
        )  # fmt: skip
        self.eval_rows_bytes = Counter(
            "tidal_worker_embedding_eval_bytes_total",
            "gRPC message bytes of evaluations' row pulls (requests and replies).", table_labels,
            registry=registry,
        )  # fmt: skip
        self._bound: JobWorkerMetrics | None = None

    def for_job(self, job_id: str, mode: str, worker_id: str) -> JobWorkerMetrics:
        """Binds a new job's labels and drops the previous job's series."""
        if self._bound is not None:
            self._bound.remove()
        self._bound = JobWorkerMetrics(self, (job_id, mode, worker_id))
        return self._bound


class JobWorkerMetrics:
    def __init__(self, families: WorkerMetrics, labels: tuple[str, str, str]) -> None:
        self.families = families
        self.labels = labels
        f = families
        self.phase = {phase: f.phase.labels(*labels, phase) for phase in PHASES}
        self.duration = f.duration.labels(*labels)
        self.samples = f.samples.labels(*labels)
        self.steps = f.steps.labels(*labels)
        self.loss = f.loss.labels(*labels)
        self.step = f.step.labels(*labels)
        self.param_version = f.param_version.labels(*labels)
        self.sent = f.sent.labels(*labels)
        self.received = f.received.labels(*labels)
        self.injected = f.injected.labels(*labels)
        self.saved = f.saved.labels(*labels)
        self._tables: set[str] = set()

    def record_step(
        self, compute_s: float, injected_s: float, exchange: PhaseTimes, total_s: float, samples: int, loss: float
    ) -> None:
        self.phase["compute"].observe(compute_s)
        self.phase["injected"].observe(injected_s)
        self.phase["push"].observe(exchange.push)
        self.phase["barrier"].observe(exchange.barrier)
        self.phase["pull"].observe(exchange.pull)
        self.injected.inc(injected_s)
        self.duration.observe(total_s)
        self.samples.inc(samples)
        self.steps.inc()
        self.step.inc()
        self.loss.set(loss)

    def record_rows(self, table: str, pulled: int, pushed: int, seen: int, wire_bytes: int) -> None:
        """One training step's reads and writes of one embedding table."""
        f, labels = self.families, (*self.labels, table)
        self._tables.add(table)
        f.rows_pulled.labels(*labels).inc(pulled)
        f.rows_pushed.labels(*labels).inc(pushed)
        f.rows_bytes.labels(*labels).inc(wire_bytes)
        if seen:
            f.rows_unique_ratio.labels(*labels).set(pulled / seen)

    def record_eval_rows(self, table: str, pulled: int, wire_bytes: int) -> None:
        """One evaluation pull of one embedding table."""
        f, labels = self.families, (*self.labels, table)
        self._tables.add(table)
        f.eval_rows_pulled.labels(*labels).inc(pulled)
        f.eval_rows_bytes.labels(*labels).inc(wire_bytes)

    def remove(self) -> None:
        f = self.families
        for table in self._tables:
            for family in (f.rows_pulled, f.rows_pushed, f.rows_unique_ratio, f.rows_bytes, f.eval_rows_pulled,
                           f.eval_rows_bytes):  # fmt: skip
                with contextlib.suppress(KeyError):  # a series never set (a ratio, an evaluation's)
                    family.remove(*self.labels, table)
        for phase in PHASES:
            f.phase.remove(*self.labels, phase)
        families = (f.duration, f.samples, f.steps, f.loss, f.step, f.param_version, f.sent, f.received, f.injected)
        for family in (*families, f.saved):
            family.remove(*self.labels)
