"""docker-compose.yml: valid for docker-compose 1.29, and what the issue promises is in it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import (
    COMPOSE_FILE,
    COMPOSE_OVERRIDE,
    ENV_EXAMPLE,
    HOST_NETWORK,
    HOST_NETWORK_PROMETHEUS,
    PROMETHEUS_CONFIG,
    ROOT,
    compose_model,
    env_of,
    healthcheck_port_var,
    named_mounts,
    require_tool,
    tidal_services,
)
from tidal.client import load_spec_file
from tidal.core.plan import job_dataset, job_model, job_shard_map
from tidal.core.spec import parse_job_spec

DEFAULT = compose_model(COMPOSE_FILE, COMPOSE_OVERRIDE)
HOST = compose_model(COMPOSE_FILE, HOST_NETWORK)
SERVICES = DEFAULT["services"]


def host_path(service: dict, container_path: str) -> Path:
    """The file of this repository that a bind mount puts at `container_path` (the deepest
    mount wins, as in the container)."""
    binds = [volume.split(":")[:2] for volume in service.get("volumes", [])]
    for source, target in sorted(binds, key=lambda b: len(b[1]), reverse=True):
        if source.startswith("./") and (container_path == target or container_path.startswith(target + "/")):
            return ROOT / source / Path(container_path).relative_to(target)
    raise AssertionError(f"nothing mounted at {container_path}")


def demo_spec() -> dict:
    args = SERVICES["submit"]["command"]
    return load_spec_file(host_path(SERVICES["submit"], args[1]))


# Both CLIs the README promises. docker-compose 1.29 (Debian's package, scripts/ensure-test-deps.sh)
# is required; Compose v2 is used where one is found: the `docker compose` plugin, or a v2
# binary named by TIDAL_TEST_COMPOSE_V2, or the one scripts/fetch-compose-v2.sh puts in .venv
# (`make test` runs it). Missing: skipped locally, a failure under CI=true.
COMPOSE_TOOLS = ["1.29", "v2"]
FETCHED_COMPOSE_V2 = ROOT / ".venv" / "compose-v2" / "docker-compose"


def compose_cli(tool: str) -> list[str]:
    """The command that runs Compose `tool`, checked to be that version."""
    if tool == "1.29":
        command = [require_tool("docker-compose")]
    elif binary := os.environ.get("TIDAL_TEST_COMPOSE_V2"):
        command = [binary]
    elif (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], check=False, capture_output=True, timeout=60).returncode
        == 0
    ):
        command = ["docker", "compose"]
    elif FETCHED_COMPOSE_V2.is_file():
        command = [str(FETCHED_COMPOSE_V2)]
    else:
        missing = "no Compose v2: no `docker compose` plugin, no TIDAL_TEST_COMPOSE_V2, no " + str(FETCHED_COMPOSE_V2)
        if os.environ.get("CI") == "true":
            pytest.fail(missing + " (scripts/fetch-compose-v2.sh)")
        pytest.skip(missing)
    version = subprocess.run(
        [*command, "version", "--short"], check=False, capture_output=True, text=True, timeout=60
    ).stdout.strip()
    expected = "1.29" if tool == "1.29" else ("2.", "v2.")
    assert version.startswith(expected), f"expected Compose {tool}, got {version!r} from {command}"
    return command


def docker_compose(*args: str, env_file: Path = ENV_EXAMPLE, tool: str = "1.29") -> str:
    """`docker-compose --env-file ENV_FILE ARGS` (Compose `tool`) in the repository, without this
    shell's TIDAL_* and COMPOSE_* variables or a local .env: only `env_file` sets variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDAL_", "COMPOSE_"))}
    done = subprocess.run(
        [*compose_cli(tool), "--env-file", str(env_file), *args], check=False, cwd=ROOT, capture_output=True,
        text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


VARIANTS = {"default": [], "host network": [COMPOSE_FILE, HOST_NETWORK]}


@pytest.mark.parametrize("files", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("tool", COMPOSE_TOOLS)
def test_docker_compose_1_29_and_v2_accept_the_files(files: list[Path], tool: str) -> None:
    args = [a for f in files for a in ("-f", str(f))]
    docker_compose(*args, "--profile", "monitoring", "config", "-q", tool=tool)


def test_no_version_or_name_key_so_compose_v1_and_v2_agree() -> None:
    for path in (COMPOSE_FILE, COMPOSE_OVERRIDE, HOST_NETWORK):
        assert not {"version", "name"} & set(yaml.safe_load(path.read_text())), path


def test_stack_has_every_role_prometheus_and_grafana() -> None:
    assert {"coordinator", "shard-0", "shard-1", "worker", "submit", "prometheus", "grafana"} <= set(SERVICES)
    assert SERVICES["worker"]["deploy"]["replicas"] == 3


ONE_SHOT = ("certs", "submit")
AFTER_CERTS = {"certs": "service_completed_successfully"}


def test_tidal_services_have_healthchecks_grace_periods_and_ordering() -> None:
    for name, service in tidal_services(DEFAULT).items():
        assert service["restart"] == ("no" if name in ONE_SHOT else "unless-stopped"), name
        if name in ONE_SHOT:
            continue
        assert healthcheck_port_var(service) == "TIDAL_METRICS_PORT", f"{name}: healthcheck is not `tidal-probe`"
        assert "TIDAL_METRICS_PORT" in env_of(service), name
        assert service["stop_grace_period"], name
        assert service["depends_on"]["certs"]["condition"] == AFTER_CERTS["certs"], name
        if name != "coordinator":
            assert service["depends_on"]["coordinator"]["condition"] == "service_healthy", name
    submit_deps = SERVICES["submit"]["depends_on"]
    assert {d: c["condition"] for d, c in submit_deps.items()} == AFTER_CERTS | dict.fromkeys(
        ["coordinator", "shard-0", "shard-1", "worker"], "service_healthy"
    )
    assert "depends_on" not in SERVICES["certs"]


def _certs_layout(services: dict) -> tuple[Path, dict[str, str], list[str]]:
    """The certs service's output folder, named volume -> holder folder it fills, and its SANs."""
    args = services["certs"]["command"]
    assert args[0] == "certs" and "--split" in args and "--keep-existing" in args, args
    out = Path(args[1])
    mounts = named_mounts(services["certs"], DEFAULT["volumes"])
    holders = {}
    for target, (volume, _) in mounts.items():
        if Path(target).parent == out:
            holders[volume] = Path(target).name
    sans = [args[i + 1] for i, a in enumerate(args) if a == "--san"]
    return out, holders, sans


@pytest.mark.parametrize("variant", ["default", "host network"])
def test_mutual_tls_is_on_with_one_share_of_the_bundle_per_service(variant: str) -> None:
    """Every tidal service names its certificate (TLS on, never plaintext), reads it from a
    read-only volume that the certs service fills with that holder's share only, and dials
    names its certificate carries; only certs sees the CA key."""
    model = DEFAULT if variant == "default" else HOST
    services = tidal_services(model)
    out, holders, sans = _certs_layout(services)
    (ca_volume,) = [v for t, (v, _) in named_mounts(services["certs"], model["volumes"]).items() if Path(t) == out]
    assert set(holders.values()) >= {"coordinator", "shard", "worker", "admin", "public"}, holders
    for name, service in services.items():
        if name == "certs":
            continue
        env = env_of(service)
        assert "TIDAL_ALLOW_PLAINTEXT" not in env, name
        role = service["command"][0] if name != "submit" else "admin"
        if role != "admin":  # services: job specs name built-in models only
            assert env.get("TIDAL_MODEL_MODULES") == "", f"{name}: job specs could load any module"
        assert env.get("TIDAL_TLS_NAME") == role, f"{name}: TIDAL_TLS_NAME"
        mounts = named_mounts(service, model["volumes"])
        assert env["TIDAL_TLS_DIR"] in mounts, f"{name}: TIDAL_TLS_DIR is not a volume"
        volume, read_only = mounts[env["TIDAL_TLS_DIR"]]
        assert read_only and holders.get(volume) == role, f"{name}: mounts {volume}, not the {role} share"
        assert ca_volume not in {v for v, _ in mounts.values()}, f"{name} can read the CA key"
        if "TIDAL_TOKENS_FILE" in env:
            assert name == "coordinator" and Path(env["TIDAL_TOKENS_FILE"]).parent == Path(env["TIDAL_TLS_DIR"])
        for var in ("TIDAL_COORDINATOR", "TIDAL_ADVERTISE_HOST"):
            if var in env:
                host = env[var].rsplit(":", 1)[0] if var == "TIDAL_COORDINATOR" else env[var]
                assert host in sans or host == "127.0.0.1", f"{name}: {var} host {host} is not in the certificates"
    assert env_of(services["coordinator"])["TIDAL_TOKENS_FILE"]


def test_prometheus_scrapes_over_https_with_the_ca_only() -> None:
    services = tidal_services(DEFAULT)
    _, holders, sans = _certs_layout(services)
    prometheus = SERVICES["prometheus"]
    mounts = named_mounts(prometheus, DEFAULT["volumes"])
    tls_mounts = {t: v for t, (v, ro) in mounts.items() if v in holders and ro}
    assert list(tls_mounts.values()) == [next(v for v, h in holders.items() if h == "public")], mounts
    assert prometheus["depends_on"]["certs"]["condition"] == AFTER_CERTS["certs"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (mount,) = tls_mounts
    for job in config["scrape_configs"]:
        assert job["scheme"] == "https", job["job_name"]
        assert job["tls_config"]["ca_file"] == f"{mount}/ca.crt", job["job_name"]
        assert set(job["tls_config"]) <= {"ca_file", "server_name"}, "no client certificate: /metrics is read-only"
        if "dns_sd_configs" in job:  # scraped by address: the name checked must be in the certificates
            assert job["tls_config"]["server_name"] in sans


def test_shards_have_stable_names_and_named_checkpoint_volumes() -> None:
    shards = {n: s for n, s in SERVICES.items() if s.get("command") == ["shard"]}
    assert sorted(shards) == ["shard-0", "shard-1"]
    for name, shard in shards.items():
        assert env_of(shard)["TIDAL_ADVERTISE_HOST"] == name  # workers dial the shard by its service name
        volume, read_only = named_mounts(shard, DEFAULT["volumes"])[env_of(shard)["TIDAL_CHECKPOINT_DIR"]]
        assert volume == f"{name}-checkpoints" and not read_only, name


def test_demo_job_matches_the_stack_and_declares_the_straggler() -> None:
    spec = parse_job_spec(demo_spec())
    assert spec.num_workers == SERVICES["worker"]["deploy"]["replicas"]
    assert spec.num_shards == len([s for s in SERVICES.values() if s.get("command") == ["shard"]])
    assert [(s.rank, s.slowdown) for s in spec.stragglers] == [(2, 3.0)]
    shard_map = job_shard_map(spec, job_model(spec, job_dataset(spec, model_modules=None)))
    assert shard_map.num_shards == 2


def test_prometheus_targets_are_the_compose_services_and_metrics_ports() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    static = {t for j in ("tidal-coordinator", "tidal-shard") for c in jobs[j]["static_configs"] for t in c["targets"]}
    expected = {f"{n}:{env_of(SERVICES[n])['TIDAL_METRICS_PORT']}" for n in ("coordinator", "shard-0", "shard-1")}
    assert static == expected
    (dns,) = jobs["tidal-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"]
    assert str(dns["port"]) == env_of(SERVICES["worker"])["TIDAL_METRICS_PORT"]
    prometheus = SERVICES["prometheus"]
    assert host_path(prometheus, "/etc/prometheus/prometheus.yml") == PROMETHEUS_CONFIG
    assert host_path(prometheus, "/etc/prometheus/rules/tidal-alerts.yml").is_file()


def test_grafana_home_dashboard_and_anonymous_viewer() -> None:
    grafana = SERVICES["grafana"]
    env = env_of(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = host_path(grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert yaml.safe_load(home.read_text())["uid"] == "tidal-training"
    provisioning = host_path(grafana, "/etc/grafana/provisioning/dashboards/tidal.yaml")
    provider = yaml.safe_load(provisioning.read_text())["providers"][0]
    assert provider["options"]["path"] == str(Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).parent)
    assert host_path(grafana, "/etc/grafana/provisioning/datasources/prometheus.yaml").is_file()


def test_host_network_variant_uses_loopback_and_distinct_fixed_ports() -> None:
    services = tidal_services(HOST)
    ports: list[str] = []
    for name, service in services.items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service, f"{name}: published ports are refused with network_mode host"
        env = env_of(service)
        for key in ("TIDAL_HOST", "TIDAL_ADVERTISE_HOST"):
            assert env.get(key, "127.0.0.1") == "127.0.0.1", f"{name}: {key}={env[key]}"
        if "TIDAL_COORDINATOR" in env:
            assert env["TIDAL_COORDINATOR"] == f"127.0.0.1:{env_of(services['coordinator'])['TIDAL_PORT']}", name
        if name != "worker":  # replicas bind free ports
            ports += [env[k] for k in ("TIDAL_PORT", "TIDAL_HTTP_PORT", "TIDAL_METRICS_PORT") if k in env]
    assert len(ports) == len(set(ports)), f"ports collide on the host network: {sorted(ports)}"
    assert env_of(services["worker"])["TIDAL_PORT"] == "0"


def test_host_network_prometheus_reads_the_files_every_tidal_service_writes() -> None:
    """deploy/prometheus/host-network.yml reads /etc/prometheus/targets: the volume every
    coordinator, shard and worker writes its scrape target file into (TIDAL_SCRAPE_TARGET_DIR)."""
    services = HOST["services"]
    prometheus = services["prometheus"]
    assert host_path(prometheus, "/etc/prometheus/prometheus.yml") == HOST_NETWORK_PROMETHEUS
    (volume,) = [
        v for t, (v, ro) in named_mounts(prometheus, HOST["volumes"]).items() if t == "/etc/prometheus/targets"
    ]
    assert named_mounts(prometheus, HOST["volumes"])["/etc/prometheus/targets"] == (volume, True)
    writers = set()
    for name, service in tidal_services(HOST).items():
        directory = env_of(service).get("TIDAL_SCRAPE_TARGET_DIR")
        if directory is not None:
            assert named_mounts(service, HOST["volumes"])[directory] == (volume, False), name
            writers.add(name)
    assert writers == {"coordinator", "shard-0", "shard-1", "worker"}
    assert not any("TIDAL_SCRAPE_TARGET_DIR" in env_of(s) for s in DEFAULT["services"].values())
    # Memory only (nothing outlives the stack), writable by the image's user.
    opts = HOST["volumes"][volume]["driver_opts"]
    assert opts["type"] == "tmpfs" and "uid=10001" in opts["o"].split(",")


def test_host_network_grafana_reads_the_host_network_prometheus() -> None:
    grafana = HOST["services"]["grafana"]
    datasource = host_path(grafana, "/etc/grafana/provisioning/datasources/prometheus.yaml")
    ours, default = (
        yaml.safe_load(p.read_text())
        for p in (datasource, ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml")
    )
    (source,) = ours["datasources"]
    url_var = source.pop("url").removeprefix("$")
    assert ours == {**default, "datasources": [{k: v for k, v in default["datasources"][0].items() if k != "url"}]}
    listen = [a for a in HOST["services"]["prometheus"]["command"] if a.startswith("--web.listen-address=")]
    assert [f"--web.listen-address={env_of(grafana)[url_var].removeprefix('http://')}"] == listen
