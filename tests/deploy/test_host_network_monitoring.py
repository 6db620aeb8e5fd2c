"""Monitoring the host-network variant, without Docker: the tidal services of docker-compose.yml
+ deploy/compose/host-network.yml run as local processes with their commands, environments and
volumes as written (test_as_processes.py's rewriting: free ports, volumes as folders, mutual
TLS), and a real Prometheus runs deploy/prometheus/host-network.yml with the mounts of the
compose `prometheus` service. Prometheus must find the coordinator, both shards and every worker
through the files they write, follow workers that stop, crash and get replaced, and keep a
stopped shard as a target that is down (TidalShardDown), as prometheus.yml does by name.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import COMPOSE_FILE, HOST_NETWORK, ROOT, compose_model, env_of, tidal_services
from tests.deploy.test_as_processes import compose_order, loopback_env, on_host, run_once, volume_mounts
from tests.integration.helpers import processes_mentioning, wait_until
from tests.integration.prometheus import require_binary
from tidal.launcher import LocalCluster
from tidal.local_prometheus import Prometheus

pytestmark = pytest.mark.integration
# Generous: six services and Prometheus share 2 busy cores; file_sd rereads every 5 s.
TIMEOUT_S = 180.0
WORKERS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prometheus_config(model: dict[str, Any], volumes_root: Path) -> tuple[dict[str, Any], Path]:
    """The compose prometheus service's config file with every /etc/prometheus path at the local
    file or folder that the service's bind mounts and named volumes put there."""
    service = model["services"]["prometheus"]
    mounts = volume_mounts(service, model["volumes"], volumes_root)
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = ROOT / source
    (flag,) = [a for a in service["command"] if a.startswith("--config.file=")]
    config_file = Path(on_host(flag.partition("=")[2], mounts) or "")
    text = config_file.read_text()
    for target in sorted(mounts, key=len, reverse=True):
        text = text.replace(f"{target}/", f"{mounts[target]}/")
    return yaml.safe_load(text), mounts["/etc/prometheus/targets"]


def by_name(env: dict[str, str], services: dict[str, dict[str, Any]]) -> dict[str, str]:
    """`env` with TIDAL_COORDINATOR 127.0.0.1:PORT as SERVICE:PORT, SERVICE being the one whose
    TIDAL_PORT is PORT on the host network (test_as_processes' rewriting dials names)."""
    if "TIDAL_COORDINATOR" not in env:
        return env
    host, port = env["TIDAL_COORDINATOR"].rsplit(":", 1)
    assert host == "127.0.0.1", env["TIDAL_COORDINATOR"]
    (name,) = [n for n, s in services.items() if env_of(s).get("TIDAL_PORT") == port]
    return {**env, "TIDAL_COORDINATOR": f"{name}:{port}"}


def targets(prometheus: Prometheus) -> dict[str, dict[str, str]]:
    """job -> scrape URL -> health, of the active targets."""
    out: dict[str, dict[str, str]] = {}
    for target in prometheus.api("targets")["activeTargets"]:
        out.setdefault(target["labels"]["job"], {})[target["scrapeUrl"]] = target["health"]
    return out


def metrics_url(cluster: LocalCluster, name: str) -> str:
    return f"https://127.0.0.1:{cluster.services[name].info['metrics_port']}/metrics"


def test_prometheus_finds_every_service_of_the_host_network_variant(tmp_path: Path) -> None:
    require_binary("prometheus")
    model = compose_model(COMPOSE_FILE, HOST_NETWORK)
    services = tidal_services(model)
    names = set(model["services"])
    assert env_of(services["worker"])["TIDAL_METRICS_PORT"] == "0"  # why files, not names or ports
    bound: dict[str, dict[str, Any]] = {}
    cluster = LocalCluster(tmp_path, start_timeout_s=TIMEOUT_S)
    (tmp_path / "logs").mkdir()
    volumes_root = tmp_path / "volumes"
    prometheus: Prometheus | None = None
    worker_args: list[str] = []
    worker_envs: list[dict[str, str]] = []
    try:
        for name in [n for n in compose_order(services) if n != "submit"]:
            service = services[name]
            mounts = volume_mounts(service, model["volumes"], volumes_root)
            args = [on_host(a, mounts) or a for a in service["command"]]
            if "--ready-file" in args:  # the container's own; the launcher gives each process one
                i = args.index("--ready-file")
                del args[i : i + 2]
            env = loopback_env(args[0], by_name(env_of(service), services), names, bound, tmp_path / name, mounts)
            if name == "certs":
                run_once(args, {**cluster.env, **env}, name)
                continue
            assert env["TIDAL_SCRAPE_TARGET_DIR"].startswith(str(volumes_root)), f"{name}: not in a volume"
            if name != "worker":  # given ports, as host-network.yml gives them (free ones here)
                env["TIDAL_METRICS_PORT"] = str(free_port())
            replicas = service.get("deploy", {}).get("replicas", 1)
            instances = [f"{name}-{i}" for i in range(replicas)] if replicas > 1 else [name]
            for instance in instances:
                cluster.spawn(instance, args, env)
            cluster.wait_ready(instances)
            bound[name] = cluster.services[instances[0]].info
            if name == "worker":
                worker_args, worker_envs = args, [env]
        assert len(worker_envs) == 1 and services["worker"]["deploy"]["replicas"] == WORKERS

        config, target_dir = prometheus_config(model, volumes_root)
        rule_files = [Path(p) for p in config["rule_files"]]
        (tmp_path / "prometheus").mkdir()
        prometheus = Prometheus(tmp_path / "prometheus", config["scrape_configs"], rule_files=rule_files)
        prometheus.start(timeout_s=TIMEOUT_S)
        members = ["coordinator", "shard-0", "shard-1", *(f"worker-{i}" for i in range(WORKERS))]
        expected = {
            "tidal-coordinator": {metrics_url(cluster, "coordinator")},
            "tidal-shard": {metrics_url(cluster, "shard-0"), metrics_url(cluster, "shard-1")},
            "tidal-worker": {metrics_url(cluster, f"worker-{i}") for i in range(WORKERS)},
        }

        def seen(up: dict[str, set[str]], down: dict[str, set[str]] | None = None) -> bool:
            now = targets(prometheus)  # type: ignore[union-attr]
            want = {job: dict.fromkeys(urls, "up") for job, urls in up.items()}
            for job, urls in (down or {}).items():
                want[job].update(dict.fromkeys(urls, "down"))
            return now == want

        wait_until(lambda: seen(expected), TIMEOUT_S, f"Prometheus scraping {members} over HTTPS")
        assert sorted(p.name.split("-")[0] for p in target_dir.glob("*.json")) == sorted(
            ["coordinator", "shard", "shard", *["worker"] * WORKERS]
        )

        # A worker stopped (SIGTERM, as `docker compose stop`) leaves Prometheus' targets.
        cluster.kill("worker-0", signal.SIGTERM)
        assert cluster.services["worker-0"].process.wait(TIMEOUT_S) == 0
        expected["tidal-worker"].discard(metrics_url(cluster, "worker-0"))
        wait_until(lambda: seen(expected), TIMEOUT_S, "the stopped worker's target gone")

        # A worker killed leaves its file; its replacement (the container restarted, on another
        # free port) deletes it.
        crashed = metrics_url(cluster, "worker-1")
        cluster.kill("worker-1", signal.SIGKILL)
        cluster.services["worker-1"].process.wait(TIMEOUT_S)
        cluster.spawn("worker-3", worker_args, worker_envs[0])
        cluster.wait_ready(["worker-3"])
        expected["tidal-worker"] = {metrics_url(cluster, "worker-2"), metrics_url(cluster, "worker-3")}
        assert crashed not in expected["tidal-worker"]
        wait_until(lambda: seen(expected), TIMEOUT_S, "the crashed worker's target replaced")

        # A shard stopped stays a target, down: it comes back on its port.
        cluster.kill("shard-1", signal.SIGTERM)
        assert cluster.services["shard-1"].process.wait(TIMEOUT_S) == 0
        stopped = metrics_url(cluster, "shard-1")
        expected["tidal-shard"].discard(stopped)
        wait_until(lambda: seen(expected, {"tidal-shard": {stopped}}), TIMEOUT_S, "the stopped shard's target down")
    finally:
        if prometheus is not None:
            prometheus.stop()
        cluster.stop()
    assert processes_mentioning(str(tmp_path)) == []
