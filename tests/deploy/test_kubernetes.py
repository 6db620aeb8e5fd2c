"""Every overlay (alone and with the monitoring component) builds with `kubectl kustomize`
and passes `kubernetes-validate --strict` (offline Kubernetes schemas)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import (
    MONITORING,
    OVERLAYS,
    PROMETHEUS_CONFIG,
    by_kind,
    documented_sans,
    kustomize,
    pod_spec,
    workloads,
)

VALIDATE = [sys.executable, "-m", "kubernetes_validate"]
# Custom resources kubernetes-validate has no schema for; checked by hand below.
CUSTOM_KINDS = {"PodMonitor"}


def strict_validate(docs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] not in CUSTOM_KINDS]))
    return subprocess.run(
        [*VALIDATE, "--strict", "--quiet", str(path)], check=False, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("with_monitoring", [False, True], ids=["plain", "monitoring"])
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_builds_and_passes_strict_validation(overlay: Path, with_monitoring: bool, tmp_path: Path) -> None:
    components = (MONITORING,) if with_monitoring else ()
    docs = kustomize(overlay, components, tmp_path)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "Role"} <= kinds
    assert ("PodMonitor" in kinds) == with_monitoring
    done = strict_validate(docs, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for doc in docs:
        assert doc["metadata"].get("namespace", "tidal") == "tidal" or doc["kind"] == "Namespace"


def test_strict_validation_catches_a_misspelled_field(tmp_path: Path) -> None:
    docs = kustomize(OVERLAYS[0])
    coordinator = by_kind(docs, "Deployment")["tidal-coordinator"]
    pod_spec(coordinator)["containers"][0]["readinessProbe"]["grcp"] = {"port": 50051}
    done = strict_validate(docs, tmp_path)
    assert done.returncode != 0
    assert "grcp" in done.stdout + done.stderr


def test_pod_disruption_budget_covers_the_shards() -> None:
    docs = kustomize(OVERLAYS[0])
    (pdb,) = by_kind(docs, "PodDisruptionBudget").values()
    (shards,) = by_kind(docs, "StatefulSet").values()
    assert pdb["spec"]["selector"] == shards["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 0


def test_pod_monitors_scrape_every_role_under_the_prometheus_job_names(tmp_path: Path) -> None:
    docs = kustomize(OVERLAYS[0], (MONITORING,), tmp_path)
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job_names = {j["job_name"] for j in config["scrape_configs"]}
    monitored = set()
    for name, monitor in by_kind(docs, "PodMonitor").items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        pods = [w for w in workloads(docs) if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"{name} selects no pod"
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        # /metrics is HTTPS; Prometheus checks it with the CA only (no client certificate).
        assert endpoint["scheme"] == "https", name
        assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": "tidal-tls-public", "key": "ca.crt"}, name
        assert endpoint["tlsConfig"]["serverName"] in documented_sans(), name
        for pod in pods:
            assert endpoint["port"] in {p["name"] for c in pod_spec(pod)["containers"] for p in c["ports"]}
        (relabel,) = endpoint["relabelings"]
        assert relabel["targetLabel"] == "job" and relabel["replacement"] in job_names
        monitored.add(relabel["replacement"])
    assert monitored == job_names
