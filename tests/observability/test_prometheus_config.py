"""The docker-compose Prometheus config and tidal's alert rules, checked by promtool.

promtool (Debian package `prometheus`) is a real component: a missing one fails CI and skips a
local run, with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
# The host-network variant's: every service found through the files it writes (file_sd).
HOST_NETWORK_CONFIG = PROMETHEUS / "host-network.yml"
TARGETS = "/etc/prometheus/targets/"  # where deploy/compose/host-network.yml mounts those files
RULES = PROMETHEUS / "rules" / "tidal-alerts.yml"
RULE_TESTS = PROMETHEUS / "rules" / "tidal-alerts.test.yml"
MOUNT = "/etc/prometheus/"  # where docker-compose mounts deploy/prometheus
REQUIRED_ALERTS = {"TidalWorkerMissingHeartbeats", "TidalShardDown", "TidalStalenessAboveBound", "TidalNoProgress"}
# Grafana variables as the "All" selection, so dashboard queries parse as plain PromQL.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$tidal_job": ".*", "$mode": ".*", "$worker": ".*"}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian package 'prometheus'; make test and .ci/run install it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [_promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alerts() -> dict[str, dict[str, Any]]:
    (group,) = _load(RULES)["groups"]
    assert group["name"] == "tidal"
    return {rule["alert"]: rule for rule in group["rules"]}


@pytest.fixture
def mounted(tmp_path: Path) -> Path:
    """deploy/prometheus as docker-compose mounts it, under tmp_path instead of /etc/prometheus."""
    root = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, root)
    config = root / "prometheus.yml"
    config.write_text(CONFIG.read_text().replace(MOUNT, f"{root}/"))
    return config


def test_config_is_valid_and_loads_exactly_the_alert_rules(mounted: Path) -> None:
    output = _run("check", "config", mounted)
    # The rules glob must match the rules file and not the promtool unit tests beside it.
    assert "SUCCESS: 1 rule files found" in output, output
    assert "tidal-alerts.test.yml" not in output, output


def test_host_network_config_is_valid_and_loads_exactly_the_alert_rules(tmp_path: Path) -> None:
    root = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, root)
    config = root / "host-network.yml"
    config.write_text(HOST_NETWORK_CONFIG.read_text().replace(MOUNT, f"{root}/"))
    output = _run("check", "config", config)
    assert "SUCCESS: 1 rule files found" in output, output
    assert "tidal-alerts.test.yml" not in output, output


def test_host_network_config_finds_each_role_in_its_own_files_with_the_jobs_of_prometheus_yml() -> None:
    config, default = _load(HOST_NETWORK_CONFIG), _load(CONFIG)
    assert {k: v for k, v in config.items() if k != "scrape_configs"} == {
        k: v for k, v in default.items() if k != "scrape_configs"
    }
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    default_jobs = {job["job_name"]: job for job in default["scrape_configs"]}
    assert set(jobs) == set(default_jobs), "the alert rules and dashboards select on these job names"
    for name, job in jobs.items():
        role = name.removeprefix("tidal-")
        (sd,) = job["file_sd_configs"]
        # The file names of transport/scrape_targets.py: ROLE-PORT.json.
        assert sd["files"] == [f"{TARGETS}{role}-*.json"], name
        assert (job["scheme"], job["tls_config"]) == ("https", {"ca_file": default_jobs[name]["tls_config"]["ca_file"]})


def test_scrape_jobs() -> None:
    config = _load(CONFIG)
    assert config["global"]["scrape_interval"] == "5s"
    assert all(f.startswith("/etc/prometheus/rules/") for f in config["rule_files"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"tidal-coordinator", "tidal-shard", "tidal-worker"}
    assert jobs["tidal-coordinator"]["static_configs"] == [{"targets": ["coordinator:9464"]}]
    (shards,) = jobs["tidal-shard"]["static_configs"]
    assert shards["targets"] == ["shard-0:9465", "shard-1:9465"]
    (workers,) = jobs["tidal-worker"]["dns_sd_configs"]
    assert (workers["type"], workers["names"], workers["port"]) == ("A", ["worker"], 9466)


def test_rules_are_valid() -> None:
    assert "SUCCESS" in _run("check", "rules", RULES)


def test_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in _run("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_alerts_have_severity_and_annotations() -> None:
    alerts = _alerts()
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        for key in ("summary", "description"):
            assert "{{ $labels." in rule["annotations"][key], f"{name}: {key} names no label"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [case for test in _load(RULE_TESTS)["tests"] for case in test.get("alert_rule_test", [])]
    for name in _alerts():
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"no test where {name} fires"
        assert any(not case.get("exp_alerts") for case in mine), f"no test where {name} stays quiet"


def test_required_alert_semantics() -> None:
    alerts = _alerts()
    heartbeats = alerts["TidalWorkerMissingHeartbeats"]["expr"]
    assert 'increase(tidal_coordinator_missed_heartbeats_total{role="worker"}[5m]) > 0' in heartbeats
    assert alerts["TidalShardDown"]["expr"].strip() == 'up{job="tidal-shard"} == 0'
    assert alerts["TidalShardDown"]["for"] == "1m"
    stale = alerts["TidalStalenessAboveBound"]["expr"]
    assert "histogram_quantile(0.99" in stale and "tidal_job_staleness_bound" in stale and "on (tidal_job)" in stale
    progress = alerts["TidalNoProgress"]["expr"]
    assert 'tidal_job_info{state="running"}' in progress and "tidal_job_last_progress_timestamp_seconds" in progress
    assert alerts["TidalNoProgress"]["for"] == "1m"


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each panel expression, as a recording rule, through promtool's PromQL parser."""
    spec = importlib.util.spec_from_file_location("tidal_grafana_dashboards", ROOT / "deploy/grafana/dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rules = []
    for name, text in module.build().items():
        for title, expr in module.panel_queries(json.loads(text)):
            query = expr
            for variable, value in SUBSTITUTIONS.items():
                query = query.replace(variable, value)
            assert "$" not in query, f"{name} / {title}: unsubstituted variable in {expr}"
            rules.append({"record": f"dashboard:query_{len(rules)}", "expr": query})
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in _run("check", "rules", path)
