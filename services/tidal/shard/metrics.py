"""A parameter shard's Prometheus metrics, labelled by job, mode and shard index."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidal.core.push_outcomes import PushOutcome
from tidal.core.shard_state import ShardState
from tidal.transport.metrics import LATENCY_BUCKETS

LABELS = ["tidal_job", "mode", "shard"]
# Staleness is counted in versions: small integers with a long tail under stragglers.
STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
CONSISTENCY_SETTINGS = ("backup_workers", "staleness_bound")
# How an Exchange stream's tensors travel (transport/shm.py).
TRANSPORTS = ("shared_memory", "bulk", "grpc")
REJECT_REASONS = ("stale", "late", "duplicate", "non_finite", "bad_input")
REASON_FOR_OUTCOME = {
    PushOutcome.DUPLICATE: "duplicate",
    PushOutcome.DROPPED_LATE: "late",
    PushOutcome.REJECTED_STALE: "stale",
}


class ShardMetrics:
    """The metric families of one shard process; `for_job` binds one job's labels."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.applied = Counter(
            "tidal_shard_updates_applied_total", "Gradients folded into the parameters.", LABELS, registry=registry
        )
        self.rejected = Counter(
            "tidal_shard_updates_rejected_total",
            "Pushes refused or dropped, by reason.",
            [*LABELS, "reason"],
            registry=registry,
        )
        self.staleness = Histogram(
            "tidal_shard_update_staleness",
            "Versions between an applied gradient's base and the version it was applied to.",
            LABELS,
            buckets=STALENESS_BUCKETS,
            registry=registry,
        )
        self.barrier_wait = Histogram(
            "tidal_shard_barrier_wait_seconds",
            "Sync: from the first gradient of a version to the barrier completing, in seconds.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.apply = Histogram(
            "tidal_shard_apply_seconds",
            "Handling a push that changed the parameters (aggregation and optimizer step), in seconds.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.version = Gauge("tidal_shard_version", "Current parameter version.", LABELS, registry=registry)
        self.parameters = Gauge("tidal_shard_parameters", "Parameter elements held.", LABELS, registry=registry)
        self.held_bytes = Gauge(
            "tidal_shard_held_bytes",
            "Bytes held, by kind (parameters, optimizer).",
            [*LABELS, "kind"],
            registry=registry,
        )
        self.received = Counter(
            "tidal_shard_received_bytes_total", "Data-plane bytes received.", LABELS, registry=registry
        )
        self.sent = Counter("tidal_shard_sent_bytes_total", "Data-plane bytes sent.", LABELS, registry=registry)
        self.streams = Counter(
            "tidal_shard_exchange_streams_total",
            "Exchange streams opened by workers, by how their tensors travel "
            "(transport: shared_memory on one host, bulk on a socket beside the stream, grpc inline in the messages).",
            [*LABELS, "transport"],
            registry=registry,
        )
        self.consistency = Gauge(
            "tidal_shard_consistency_setting",
            "The consistency settings in force (mode auto tunes them), by setting (backup_workers, staleness_bound).",
            [*LABELS, "setting"],
            registry=registry,
        )
        self.decisions = Counter(
            "tidal_shard_auto_decisions_total",
            "Mode auto: times the tuner changed the settings.",
            LABELS,
            registry=registry,
        )
        self._bound: JobShardMetrics | None = None

    def for_job(self, job_id: str, mode: str, shard: int) -> JobShardMetrics:
        """Binds a new job's labels and drops the previous job's series (one job per shard at a
        time keeps the label cardinality bounded)."""
        if self._bound is not None:
            self._bound.remove()
        self._bound = JobShardMetrics(self, (job_id, mode, str(shard)))
        return self._bound


class JobShardMetrics:
    def __init__(self, families: ShardMetrics, labels: tuple[str, str, str]) -> None:
        self.families = families
        self.labels = labels
        f = families
        self.applied = f.applied.labels(*labels)
        self.rejected = {reason: f.rejected.labels(*labels, reason) for reason in REJECT_REASONS}
        self.staleness = f.staleness.labels(*labels)
        self.barrier_wait = f.barrier_wait.labels(*labels)
        self.apply = f.apply.labels(*labels)
        self.version = f.version.labels(*labels)
        self.parameters = f.parameters.labels(*labels)
        self.parameter_bytes = f.held_bytes.labels(*labels, "parameters")
        self.optimizer_bytes = f.held_bytes.labels(*labels, "optimizer")
        self.received = f.received.labels(*labels)
        self.sent = f.sent.labels(*labels)
        self.streams = {transport: f.streams.labels(*labels, transport) for transport in TRANSPORTS}
        self.settings = {name: f.consistency.labels(*labels, name) for name in CONSISTENCY_SETTINGS}
        self.decisions = f.decisions.labels(*labels)

    def consistency(self, backup_workers: int, staleness_bound: int) -> None:
        self.settings["backup_workers"].set(backup_workers)
        self.settings["staleness_bound"].set(staleness_bound)

    def held(self, state: ShardState) -> None:
        self.version.set(state.version)
        self.parameters.set(state.numel)
        self.parameter_bytes.set(state.numel * state.params.element_size())
        optimizer_bytes = sum(
            t.numel() * t.element_size()
            for s in state.optimizer.state.values()
            for t in s.values()
            if hasattr(t, "numel")
        )
        self.optimizer_bytes.set(optimizer_bytes)

    def remove(self) -> None:
        f = self.families
        for family in (
            f.applied,
            f.staleness,
            f.barrier_wait,
            f.apply,
            f.version,
            f.parameters,
            f.received,
            f.sent,
            f.decisions,
        ):
            family.remove(*self.labels)
        for name in CONSISTENCY_SETTINGS:
            f.consistency.remove(*self.labels, name)
        for reason in REJECT_REASONS:
            f.rejected.remove(*self.labels, reason)
        for kind in ("parameters", "optimizer"):
            f.held_bytes.remove(*self.labels, kind)
        for transport in TRANSPORTS:
            f.streams.remove(*self.labels, transport)
