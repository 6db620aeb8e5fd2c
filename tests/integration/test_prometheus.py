"""A real Prometheus scrapes a real local cluster while jobs train: every PromQL expression of
every dashboard panel must return data, and every /metrics page must pass promtool."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.helpers import run_job, wait_until
from tests.integration.prometheus import require_binary
from tidal.launcher import LocalCluster
from tidal.local_prometheus import Prometheus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Grafana's variables, as an "All" selection and a Prometheus-friendly rate window.
SUBSTITUTIONS = {"$__rate_interval": "5s", "$tidal_job": ".*", "$mode": ".*", "$worker": ".*"}


# A sync job with embedding tables (examples/ctr/hybrid.yaml, smaller): a bounded async table and
# a hashed one whose capacity (200 rows, 100 a shard) is below the ids its 60 steps of 64 read.
TABLES_SPEC = {
    "name": "observed-tables", "mode": "sync", "num_workers": 2, "num_shards": 2, "steps": 60, "eval_every": 30,
    "batch_size": 64, "seed": 7,
    "model": {"name": "ctr_mlp", "args": {"fields": ["ads", "sites"], "dim": 8, "hidden": [16]}},
    "dataset": {"name": "ctr_synthetic", "args": {"vocab_sizes": [1000, 100], "num_samples": 4000, "num_val": 500}},
    "embeddings": [
        {"name": "ads", "capacity": 200, "dim": 8, "optimizer": {"name": "adagrad", "lr": 0.1}},
        {"name": "sites", "num_embeddings": 100, "dim": 8, "optimizer": {"name": "adagrad", "lr": 0.1}},
    ],
}  # fmt: skip


def _dashboards() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tidal_dashboards", ROOT / "deploy" / "grafana" / "dashboards.py")
    assert spec and spec.loader, "deploy/grafana/dashboards.py is missing"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Prometheus, float, float]]:
    """A cluster (one worker 3x slower) scraped every second while a sync and an async job train,
    then a sync job with embedding tables."""
    require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("observed")
    with LocalCluster(workdir / "cluster", num_shards=2, worker_slowdowns=(1.0, 3.0)) as cluster:
        (workdir / "prom").mkdir()
        prometheus = Prometheus(workdir / "prom", cluster.scrape_configs()).start()
        try:
            wait_until(lambda: len(prometheus.targets_up()) == 5 and all(prometheus.targets_up().values()),
                       timeout_s=30, what="all five targets up")  # fmt: skip
            started = time.time()
            for mode in ("sync", "async"):
                spec = {"name": f"observed-{mode}", "mode": mode, "num_workers": 2, "num_shards": 2, "steps": 80,
                        "eval_every": 20, "model": {"name": "mlp", "args": {"hidden": [32]}}}  # fmt: skip
                run_job(cluster.coordinator_address, spec)
                time.sleep(3)  # a few scrapes of the job's last state
            run_job(cluster.coordinator_address, TABLES_SPEC)  # the "Embedding tables" row's series
            time.sleep(3)
            yield cluster, prometheus, started, time.time()
        finally:
            prometheus.stop()


def test_every_service_exposes_promtool_clean_metrics(observed: tuple[LocalCluster, Prometheus, float, float]) -> None:
    cluster, _, _, _ = observed
    promtool = require_binary("promtool")
    for name in ("coordinator", "shard-0", "shard-1", "worker-0", "worker-1"):
        with urllib.request.urlopen(cluster.metrics_url(name), timeout=10) as reply:
            text = reply.read()
        assert b"grpc_server_handled_total" in text, name
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False)
        assert check.returncode == 0, f"{name}: {check.stdout.decode()}{check.stderr.decode()}"


def test_every_dashboard_panel_query_returns_data(observed: tuple[LocalCluster, Prometheus, float, float]) -> None:
    _, prometheus, started, ended = observed
    module = _dashboards()
    dashboards = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    empty, checked = [], 0
    for path in dashboards:
        for title, expr in module.panel_queries(json.loads(path.read_text())):
            query = expr
            for variable, value in SUBSTITUTIONS.items():
                query = query.replace(variable, value)
            assert "$" not in query, f"unsubstituted variable in {title!r}: {expr}"
            checked += 1
            if not prometheus.query_range(query, started, ended):
                empty.append(f"{path.name} / {title}: {query}")
    assert checked >= 20, f"only {checked} queries found"
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_key_series_reflect_the_training(observed: tuple[LocalCluster, Prometheus, float, float]) -> None:
    _, prometheus, started, ended = observed
    modes = {r["metric"]["mode"] for r in prometheus.query_range("tidal_job_info", started, ended)}
    assert modes == {"sync", "async"}
    # The slow worker's injected delay is visible, the fast one's is zero.
    injected = prometheus.query_range("tidal_worker_injected_delay_seconds_total", started, ended)
    finals = sorted(float(r["values"][-1][1]) for r in injected)
    assert finals[0] == 0.0 and finals[-1] > 0.0
    # Async staleness reaches above zero; sync stays at zero.
    stale = prometheus.query_range("max by (mode) (tidal_shard_update_staleness_sum)", started, ended)
    by_mode = {r["metric"]["mode"]: float(r["values"][-1][1]) for r in stale}
    assert by_mode.get("sync", 0.0) == 0.0
    assert by_mode["async"] > 0.0
    # The job with tables held rows and evicted some from its hashed table.
    held = prometheus.query_range("sum(tidal_shard_embedding_rows)", started, ended)
    assert max(float(v) for _, v in held[0]["values"]) > 0
    evicted = prometheus.query_range('sum(tidal_shard_embedding_evictions_total{table="ads"})', started, ended)
    assert max(float(v) for _, v in evicted[0]["values"]) > 0
