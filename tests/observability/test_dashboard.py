"""The Grafana dashboards: generated JSON is committed as generated, and is structurally sound.

Whether every panel's query returns data is checked against a real Prometheus by
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
GENERATOR = GRAFANA / "dashboards.py"

REQUIRED_ROWS = [
    "Job progress",
    "Throughput",
    "Step time",
    "Staleness",
    "Barrier wait",
    "Bytes on the wire",
    "Embedding tables",
    "Membership and failures",
]
# docs/embeddings.md "Metrics": every row metric of the shards and the training steps' of the workers.
EMBEDDING_METRICS = {
    "tidal_shard_embedding_rows",
    "tidal_shard_embedding_held_bytes",
    "tidal_shard_embedding_rows_pulled_total",
    "tidal_shard_embedding_rows_pushed_total",
    "tidal_shard_embedding_evictions_total",
    "tidal_shard_embedding_refused_ids_total",
    "tidal_shard_embedding_bytes_total",
    "tidal_worker_embedding_rows_pulled_total",
    "tidal_worker_embedding_rows_pushed_total",
    "tidal_worker_embedding_unique_ratio",
    "tidal_worker_embedding_bytes_total",
}
VARIABLES = {"tidal_job", "mode", "worker"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__all"}
# Series labelled with a tidal job and its mode; worker series also with the worker.
PER_JOB_SELECTOR = re.compile(r"\b(tidal_(?:job|shard|worker)_[a-z_]+)\b(\{[^}]*\})?")
JOB_FILTERS = ('tidal_job=~"$tidal_job"', 'mode=~"$mode"')
WORKER_FILTER = 'worker=~"$worker"'
WORKER_ONLY_METRICS = {"tidal_worker_slowdown"}  # labelled by worker alone
VARIABLE_REF = re.compile(r"\$\{?(\w+)")


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tidal_grafana_dashboards", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _load_generator()


def _committed() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


@pytest.fixture(scope="module", params=[p.name for p in _committed()])
def board(request: pytest.FixtureRequest) -> dict[str, Any]:
    return json.loads((DASHBOARD_DIR / request.param).read_text())


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_panels(p.get("panels", [])))
    return out


def _targets(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in _panels(board["panels"]) for t in p.get("targets", [])]


def _datasource_uid() -> str:
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = config["datasources"]
    return source["uid"]


def test_committed_json_is_what_the_generator_writes(generator: ModuleType) -> None:
    expected = generator.build()
    assert sorted(expected) == [p.name for p in _committed()], "run: python deploy/grafana/dashboards.py"
    for name, text in expected.items():
        assert (DASHBOARD_DIR / name).read_text() == text, f"{name} is stale: run python deploy/grafana/dashboards.py"
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_generator_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_panel_queries_lists_every_target(generator: ModuleType, board: dict[str, Any]) -> None:
    queries = generator.panel_queries(board)
    assert len(queries) == len(_targets(board)) >= 20
    nested = {"panels": [{"type": "row", "title": "r", "collapsed": True, "panels": [{"title": "p", "targets": [
        {"expr": "up"}]}]}]}  # fmt: skip
    assert generator.panel_queries(nested) == [("p", "up")]


def test_dashboard_identity(board: dict[str, Any]) -> None:
    uid = board["uid"]
    assert len(uid) <= 40
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", uid)
    assert "tidal" in board["tags"]
    assert board["refresh"] == "5s"
    assert board["time"] == {"from": "now-15m", "to": "now"}


def test_training_dashboard_identity() -> None:
    board = json.loads((DASHBOARD_DIR / "tidal-training.json").read_text())
    assert board["uid"] == "tidal-training"
    assert board["title"] == "tidal / training"


def test_panel_ids_are_unique(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in _panels(board["panels"])]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))


def test_every_panel_target_and_variable_uses_the_provisioned_datasource(board: dict[str, Any]) -> None:
    uid = _datasource_uid()
    for p in _panels(board["panels"]):
        assert p.get("datasource", {}).get("uid") == uid, p["title"]
        for t in p.get("targets", []):
            assert t.get("datasource", {}).get("uid") == uid, p["title"]
    for v in board["templating"]["list"]:
        assert v["datasource"]["uid"] == uid, v["name"]


def test_every_target_has_a_query(board: dict[str, Any]) -> None:
    for p in _panels(board["panels"]):
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no targets"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
        for t in p["targets"]:
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), p["title"]


def test_variables(board: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == VARIABLES
    for v in variables.values():
        assert v["type"] == "query"
        assert v["multi"] and v["includeAll"]
        assert v["allValue"] == ".*"
    assert variables["tidal_job"]["definition"] == "label_values(tidal_job_info, tidal_job)"
    assert variables["mode"]["definition"] == 'label_values(tidal_job_info{tidal_job=~"$tidal_job"}, mode)'
    assert variables["worker"]["definition"] == (
        'label_values(tidal_worker_steps_total{tidal_job=~"$tidal_job"}, worker)'
    )


def test_every_referenced_variable_is_defined(board: dict[str, Any]) -> None:
    defined = {v["name"] for v in board["templating"]["list"]} | GRAFANA_BUILTINS
    texts = [t["expr"] for t in _targets(board)]
    texts += [p["title"] for p in _panels(board["panels"])]
    texts += [v["definition"] for v in board["templating"]["list"]]
    for p in _panels(board["panels"]):
        if "repeat" in p:
            texts.append(f"${p['repeat']}")
    for text in texts:
        for name in VARIABLE_REF.findall(text):
            assert name in defined, f"${name} is not defined (in {text})"


def test_per_job_series_are_filtered_by_the_variables(board: dict[str, Any]) -> None:
    for t in _targets(board):
        expr = t["expr"]
        assert "tidal_job_staleness_bound" not in expr, "no job sets a staleness bound yet: the panel stays empty"
        worker_series = False
        for match in PER_JOB_SELECTOR.finditer(expr):
            metric, selector = match.group(1), match.group(2) or ""
            worker_series |= metric.startswith("tidal_worker_")
            required = (WORKER_FILTER,) if metric in WORKER_ONLY_METRICS else JOB_FILTERS
            for label_filter in required:
                assert label_filter in selector, f"{metric} without {label_filter} in: {expr}"
        # The straggler panel's median deliberately spans all workers of a job, so the worker
        # filter is required once per expression rather than on every selector.
        if worker_series:
            assert WORKER_FILTER in expr, f"worker series without {WORKER_FILTER} in: {expr}"


def test_rates_use_the_rate_interval(board: dict[str, Any]) -> None:
    for t in _targets(board):
        for window in re.findall(r"\[([^\]]*)\]", t["expr"]):
            assert window == "$__rate_interval", t["expr"]


def test_rows(board: dict[str, Any]) -> None:
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    if board["uid"] == "tidal-training":
        assert set(REQUIRED_ROWS) <= set(rows)
    assert len(rows) == len(set(rows))


def test_training_dashboard_panels() -> None:
    board = json.loads((DASHBOARD_DIR / "tidal-training.json").read_text())
    panels = {p["title"]: p for p in _panels(board["panels"])}
    mode = panels["Mode"]
    assert mode["type"] == "stat"
    assert "tidal_job_info" in mode["targets"][0]["expr"]
    assert mode["targets"][0]["legendFormat"] == "{{mode}}"
    (staleness,) = [p for p in panels.values() if p["type"] == "heatmap"]
    (target,) = staleness["targets"]
    assert target["format"] == "heatmap"
    assert target["expr"].startswith("sum by (le) (rate(tidal_shard_update_staleness_bucket{")
    straggler = next(p for title, p in panels.items() if title.startswith("Straggler"))
    assert "quantile by (tidal_job) (0.5," in straggler["targets"][0]["expr"]
    assert any('grpc_code!="OK"' in t["expr"] for t in _targets(board))


def test_embedding_tables_row_shows_every_row_metric() -> None:
    board = json.loads((DASHBOARD_DIR / "tidal-training.json").read_text())
    top = board["panels"]
    start = next(i for i, p in enumerate(top) if p["type"] == "row" and p["title"] == "Embedding tables")
    end = next((i for i in range(start + 1, len(top)) if top[i]["type"] == "row"), len(top))
    exprs = " ".join(t["expr"] for p in top[start + 1 : end] for t in p["targets"])
    shown = set(re.findall(r"\btidal_(?:shard|worker)_embedding_[a-z_]+", exprs))
    assert shown == EMBEDDING_METRICS


def test_layout_has_no_overlaps(board: dict[str, Any]) -> None:
    boxes = []
    for p in board["panels"]:  # nested panels of collapsed rows are laid out when expanded
        g = p["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        boxes.append((p["title"], g))
    for i, (title_a, a) in enumerate(boxes):
        for title_b, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"{title_a!r} overlaps {title_b!r}"


def test_datasource_provisioning() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = config["datasources"]
    assert config["apiVersion"] == 1
    assert source["uid"] == "tidal-prometheus"
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True


def test_dashboard_provisioning() -> None:
    config = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "tidal.yaml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
