"""A shard's metrics of sparse parameters (embedding tables), labelled by job, shard and table."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from tidal.core.embeddings.shard import RowShard

LABELS = ["tidal_job", "shard", "table"]
DIRECTIONS = ("received", "sent")


class RowMetrics:
    """The metric families of one shard process; `for_job` binds one job's labels."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Gauge("tidal_shard_embedding_rows", "Embedding rows held.", LABELS, registry=registry)
        self.held_bytes = Gauge(
            "tidal_shard_embedding_held_bytes",
            "Bytes allocated for embedding rows (values, optimizer state, bookkeeping).",
            LABELS,
            registry=registry,
        )
        self.pulled = Counter(
            "tidal_shard_embedding_rows_pulled_total", "Embedding rows served to PullRows.", LABELS, registry=registry
        )
        self.pushed = Counter(
            "tidal_shard_embedding_rows_pushed_total",
            "Embedding rows an optimizer step was applied to (a sync step counts its summed rows once).",
            LABELS,
            registry=registry,
        )
        self.evictions = Counter(
            "tidal_shard_embedding_evictions_total",
            "Embedding rows evicted (least recently used) to stay within a hashed table's capacity.",
            LABELS,
            registry=registry,
        )
        self.refused_ids = Counter(
            "tidal_shard_embedding_refused_ids_total",
            "Ids refused in row requests (out of range, repeated, held by another shard, non-finite gradient).",
            LABELS,
            registry=registry,
        )
        self.bytes = Counter(
            "tidal_shard_embedding_bytes_total",
            "Row RPC payload bytes (ids, rows, gradients), by direction (received, sent).",
            [*LABELS, "direction"],
            registry=registry,
        )
        self._bound: JobRowMetrics | None = None

    def for_job(self, job_id: str, shard: int, tables: list[str]) -> JobRowMetrics:
        """Binds a new job's labels and drops the previous job's series."""
        self.drop()
        self._bound = JobRowMetrics(self, job_id, str(shard), tables)
        return self._bound

    def drop(self) -> None:
        """Drops the previous job's series (a new job without tables)."""
        if self._bound is not None:
            self._bound.remove()
            self._bound = None


class JobRowMetrics:
    def __init__(self, families: RowMetrics, job_id: str, shard: str, tables: list[str]) -> None:
        self.families = families
        self.labels = {t: (job_id, shard, t) for t in tables}
        # The domain's counters when last exported: counters grow by the difference.
        self._seen: dict[str, tuple[int, int, int, int]] = {t: (0, 0, 0, 0) for t in tables}
        f = families
        for labels in self.labels.values():  # every series exists from the start (at 0)
            for family in (f.rows, f.held_bytes, f.pulled, f.pushed, f.evictions, f.refused_ids):
                family.labels(*labels)
            for direction in DIRECTIONS:
                f.bytes.labels(*labels, direction)

    def update(self, rows: RowShard, table: str) -> None:
        """Exports table `table`'s counters and size after a request."""
        labels = self.labels.get(table)
        if labels is None:
            return
        f = self.families
        t = rows.tables[table]
        now = (t.counters.rows_pulled, t.counters.rows_pushed, t.counters.evictions, rows.refused_ids.get(table, 0))
        seen = self._seen[table]
        for counter, new, old in zip((f.pulled, f.pushed, f.evictions, f.refused_ids), now, seen, strict=True):
            if new > old:
                counter.labels(*labels).inc(new - old)
        self._seen[table] = now
        f.rows.labels(*labels).set(len(t))
        f.held_bytes.labels(*labels).set(t.held_bytes)

    def transferred(self, table: str, received: int, sent: int) -> None:
        labels = self.labels.get(table)
        if labels is not None:
            self.families.bytes.labels(*labels, "received").inc(received)
            self.families.bytes.labels(*labels, "sent").inc(sent)

    def remove(self) -> None:
        f = self.families
        for labels in self.labels.values():
            for family in (f.rows, f.held_bytes, f.pulled, f.pushed, f.evictions, f.refused_ids):
                family.remove(*labels)
            for direction in DIRECTIONS:
                f.bytes.remove(*labels, direction)
