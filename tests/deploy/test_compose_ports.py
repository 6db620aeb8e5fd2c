"""One .env moves every port of the compose stack: .env.example, the compose files, their rendering
by docker-compose 1.29, scripts/compose-ports.py and scripts/compose-smoke.sh agree."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    COMPOSE_FILE,
    COMPOSE_OVERRIDE,
    ENV_EXAMPLE,
    HOST_NETWORK,
    ROOT,
    compose_model,
    env_of,
    tidal_services,
)
from tests.deploy.test_compose import COMPOSE_TOOLS, docker_compose

FILES = (COMPOSE_FILE, COMPOSE_OVERRIDE, HOST_NETWORK)
VARIABLE = re.compile(r"(?<!\$)\$\{(\w+):-([^}]*)\}")
PORT_CHECK = ROOT / "scripts" / "compose-ports.py"
SMOKE = ROOT / "scripts" / "compose-smoke.sh"
MONITORING = ("prometheus", "grafana")
PORT_ENV = ("TIDAL_PORT", "TIDAL_HTTP_PORT", "TIDAL_METRICS_PORT")


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def example() -> dict[str, str]:
    return env_lines(ENV_EXAMPLE.read_text())


def commented_example(name: str) -> str:
    """The value of `#NAME=...` in .env.example (settings shown there but off by default)."""
    (value,) = re.findall(rf"^#{name}=(\S+)$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    return value


def file_defaults() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in FILES:
        for name, default in VARIABLE.findall(path.read_text()):
            found.setdefault(name, set()).add(default)
    return found


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def test_env_example_lists_every_port_variable_of_the_files_with_its_one_default() -> None:
    used = file_defaults()
    for name, defaults in used.items():
        assert len(defaults) == 1, f"{name} has several defaults in the compose files: {defaults}"
    ports = {name: defaults.pop() for name, defaults in used.items() if name.endswith("_PORT")}
    assert example() == ports, "the active lines of .env.example are the port variables with the files' defaults"
    assert len(set(ports.values())) == len(ports), f"two ports share a default: {ports}"
    assert all(path.is_file() for path in map(ROOT.joinpath, commented_example("COMPOSE_FILE").split(":")))
    assert commented_example("COMPOSE_PROFILES") == "monitoring"


def rendered(tool: str, env_file: Path, *files: Path, profile: bool = True) -> dict[str, Any]:
    args = [a for f in files for a in ("-f", str(f))] + (["--profile", "monitoring"] if profile else [])
    return yaml.safe_load(docker_compose(*args, "config", env_file=env_file, tool=tool))


def published(service: dict[str, Any]) -> set[str]:
    """Host ports of `ports:` entries as 1.29 (127.0.0.1:HOST:CONTAINER/tcp) or v2 (a mapping)
    renders them."""
    out = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ip, host = entry["host_ip"], str(entry["published"])
        else:
            ip, host, _ = str(entry).split(":")
        assert ip == "127.0.0.1", entry
        out.add(host)
    return out


@pytest.mark.parametrize("tool", COMPOSE_TOOLS)
def test_one_env_file_moves_every_port_of_both_variants(tmp_path: Path, tool: str) -> None:
    """The issue's "done": with every variable of .env.example moved, no service binds or dials
    a default port any more, in Compose's own rendering."""
    names = sorted(example())
    moved = {name: str(31000 + i) for i, name in enumerate(names)}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in moved.items()))

    default = rendered(tool, env_file)["services"]
    assert {p for s in default.values() for p in published(s)} == {
        moved[n]
        for n in (
            "TIDAL_COORDINATOR_GRPC_PORT",
            "TIDAL_COORDINATOR_HTTP_PORT",
            "TIDAL_PROMETHEUS_PORT",
            "TIDAL_GRAFANA_PORT",
        )
    }

    host = rendered(tool, env_file, COMPOSE_FILE, HOST_NETWORK)
    services = host["services"]
    bound = set()
    for name, service in tidal_services(host).items():
        env = env_of(service)
        bound |= {env[v] for v in PORT_ENV if v in env and env[v] != "0"}
        if "TIDAL_COORDINATOR" in env:
            assert env["TIDAL_COORDINATOR"] == f"127.0.0.1:{moved['TIDAL_COORDINATOR_GRPC_PORT']}", name
    listen = [a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address=")]
    assert listen == [f"--web.listen-address=127.0.0.1:{moved['TIDAL_PROMETHEUS_PORT']}"]
    bound |= {moved["TIDAL_PROMETHEUS_PORT"], env_of(services["grafana"])["GF_SERVER_HTTP_PORT"]}
    assert bound == set(moved.values()), "each variable moves one port, and no port stays at its default"
    prometheus_url = f"http://127.0.0.1:{moved['TIDAL_PROMETHEUS_PORT']}"
    assert env_of(services["grafana"])["TIDAL_PROMETHEUS_URL"] == prometheus_url
    assert services["prometheus"]["healthcheck"]["test"][-1] == f"{prometheus_url}/-/ready"
    assert not any(published(s) for s in services.values()), "network_mode host refuses published ports"

    # The tests' reading of the files (manifests.compose_model) interpolates as compose does.
    model = compose_model(COMPOSE_FILE, HOST_NETWORK, env=moved)
    for name, service in tidal_services(model).items():
        assert env_of(service) == env_of(services[name]), name


@pytest.mark.parametrize("tool", COMPOSE_TOOLS)
def test_compose_file_of_env_example_selects_the_host_network_variant_without_f(tmp_path: Path, tool: str) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"COMPOSE_FILE={commented_example('COMPOSE_FILE')}\n")
    services = yaml.safe_load(docker_compose("config", env_file=env_file, tool=tool))["services"]
    assert {name: s.get("network_mode") for name, s in services.items()} == dict.fromkeys(services, "host")


def test_monitoring_is_a_profile_that_no_tidal_service_needs() -> None:
    for files in ((COMPOSE_FILE, COMPOSE_OVERRIDE), (COMPOSE_FILE, HOST_NETWORK)):
        model = compose_model(*files)
        for name, service in model["services"].items():
            assert service.get("profiles") == (["monitoring"] if name in MONITORING else None), name
            if name not in MONITORING:
                assert not set(service.get("depends_on", {})) & set(MONITORING), name


def check_ports(env_file: Path, *names: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    return subprocess.run(
        [sys.executable, str(PORT_CHECK), "--env-file", str(env_file), *names],
        check=False, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_compose_ports_names_the_variable_to_change_for_a_taken_port(tmp_path: Path) -> None:
    names = sorted(example())
    env_file = tmp_path / ".env"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        ports["TIDAL_SHARD0_METRICS_PORT"] = busy
        env_file.write_text("".join(f"{k}={v}\n" for k, v in ports.items()))
        done = check_ports(env_file)
        assert done.returncode == 1
        assert done.stderr.splitlines() == [
            f"compose-ports: port {busy} on 127.0.0.1 is in use by another program: "
            "set TIDAL_SHARD0_METRICS_PORT to a free port in .env"
        ]
        # Only the variables asked for are checked.
        assert check_ports(env_file, "TIDAL_SHARD1_GRPC_PORT").returncode == 0
    ok = check_ports(env_file)
    assert ok.returncode == 0, ok.stderr
    assert sorted(ok.stdout.split()) == sorted(f"{n}={ports[n]}" for n in names)


def test_compose_ports_refuses_what_is_not_a_port_or_collides(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    grpc, shard = free_ports(2)
    env_file.write_text(
        f'TIDAL_COORDINATOR_GRPC_PORT="{grpc}"\nTIDAL_SHARD0_GRPC_PORT={grpc}\nTIDAL_SHARD1_GRPC_PORT=x\n'
    )
    done = check_ports(env_file, "TIDAL_COORDINATOR_GRPC_PORT", "TIDAL_SHARD0_GRPC_PORT", "TIDAL_SHARD1_GRPC_PORT")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"compose-ports: TIDAL_SHARD0_GRPC_PORT and TIDAL_COORDINATOR_GRPC_PORT are both {grpc}: "
        "set TIDAL_SHARD0_GRPC_PORT to another port in .env",
        f"compose-ports: TIDAL_SHARD1_GRPC_PORT='x' (from {env_file}) is not a port number (1-65535)",
    ]
    unknown = check_ports(env_file, "TIDAL_NO_SUCH_PORT")
    assert unknown.returncode != 0 and "TIDAL_NO_SUCH_PORT is not a variable of .env.example" in unknown.stderr
    # The shell's environment wins over .env, as in compose.
    env = {**os.environ, "TIDAL_SHARD1_GRPC_PORT": str(shard)}
    done = subprocess.run(
        [sys.executable, str(PORT_CHECK), "--env-file", str(env_file), "--resolve-only", "TIDAL_SHARD1_GRPC_PORT"],
        check=True, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.stdout.split() == [str(shard)]


def test_smoke_checks_every_fixed_port_of_the_host_network_services_before_building() -> None:
    script = SMOKE.read_text()
    (array,) = re.findall(r"^PORT_VARS=\(([^)]*)\)", script, re.MULTILINE)
    raw = yaml.safe_load(HOST_NETWORK.read_text())["services"]
    model = compose_model(COMPOSE_FILE, HOST_NETWORK)
    used = {
        name
        for service in tidal_services(model)
        for var, value in env_of(raw[service]).items()
        if var in PORT_ENV
        for name, _ in VARIABLE.findall(value)
    }
    assert set(array.split()) == used
    check = script.index('scripts/compose-ports.py "${PORT_VARS[@]}"')
    assert check < script.index('step "tools"') < script.index("docker build"), "ports are checked first"


def test_compose_v2_leaves_the_monitoring_profile_out_unless_asked(tmp_path: Path) -> None:
    """What `docker compose up` starts (docker-compose 1.29's `config` ignores profiles)."""
    for files in ((), (COMPOSE_FILE, HOST_NETWORK)):
        services = set(rendered("v2", ENV_EXAMPLE, *files, profile=False)["services"])
        assert services == {"certs", "coordinator", "shard-0", "shard-1", "worker", "submit"}, files
        assert set(MONITORING) <= set(rendered("v2", ENV_EXAMPLE, *files)["services"])
