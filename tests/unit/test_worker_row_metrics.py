"""The worker's embedding-row metrics (worker/metrics.py): per table, and gone with the job."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from tidal.worker.metrics import WorkerMetrics


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"tidal_job": "j1", "mode": "sync", "worker": "w0", **labels})


def test_rows_are_counted_per_table_and_dropped_with_the_job() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    job = metrics.for_job("j1", "sync", "w0")
    job.record_rows("ads", pulled=30, pushed=30, seen=40, wire_bytes=1000)
    job.record_rows("ads", pulled=10, pushed=10, seen=40, wire_bytes=500)
    job.record_rows("sites", pulled=0, pushed=0, seen=0, wire_bytes=0)  # a sync table the batch did not read
    assert _value(registry, "tidal_worker_embedding_rows_pulled_total", table="ads") == 40
    assert _value(registry, "tidal_worker_embedding_rows_pushed_total", table="ads") == 40
    assert _value(registry, "tidal_worker_embedding_unique_ratio", table="ads") == 0.25
    assert _value(registry, "tidal_worker_embedding_bytes_total", table="ads") == 1500
    assert _value(registry, "tidal_worker_embedding_unique_ratio", table="sites") is None
    # An evaluation's pulls are counted apart: the training steps' figures do not move.
    job.record_eval_rows("ads", pulled=7, wire_bytes=300)
    assert _value(registry, "tidal_worker_embedding_eval_rows_pulled_total", table="ads") == 7
    assert _value(registry, "tidal_worker_embedding_eval_bytes_total", table="ads") == 300
    assert _value(registry, "tidal_worker_embedding_rows_pulled_total", table="ads") == 40
    assert _value(registry, "tidal_worker_embedding_bytes_total", table="ads") == 1500
    metrics.for_job("j2", "sync", "w0")
    for name in ("rows_pulled_total", "rows_pushed_total", "unique_ratio", "bytes_total", "eval_rows_pulled_total",
                 "eval_bytes_total"):  # fmt: skip
        assert _value(registry, f"tidal_worker_embedding_{name}", table="ads") is None
