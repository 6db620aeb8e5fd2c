"""tidal-probe and GET /healthz: the gRPC health status, read by a standard-library-only probe.

A real gRPC server and a real /metrics server (uvicorn, mutual TLS from a real bundle) share one
ServerHealth, as every service's do; the probe runs as its own process (the console script).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tidal.client import check_health
from tidal.security.bundle import create_bundle
from tidal.transport.metrics import serve_metrics
from tidal.transport.server import add_health_and_reflection, create_server, set_health
from tidal.transport.tls import SecurityConfig

PROBE = Path(sys.executable).with_name("tidal-probe")
SERVICES = ["tidal.v1.Coordinator"]
# What the probe may import beyond the standard library.
ALLOWED_TIDAL = {"tidal", "tidal.config", "tidal.probe"}
FORBIDDEN = (
    "grpc",
    "google",
    "typer",
    "rich",
    "click",
    "torch",
    "numpy",
    "starlette",
    "uvicorn",
    "pydantic",
    "pathlib",
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("probe") / "pki"
    create_bundle(folder)
    yield folder


def probe_env(**env: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}, **env}


def run_probe(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROBE, *args], check=False, env=probe_env(**env), capture_output=True, text=True, timeout=120
    )


async def run_probe_async(pki: Path, port: int) -> tuple[int, str]:
    """The probe as the container runs it (port and TLS from the environment), while this loop serves."""
    proc = await asyncio.create_subprocess_exec(
        PROBE, env=probe_env(TIDAL_TLS_DIR=str(pki), TIDAL_METRICS_PORT=str(port)), stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip()


def kubelet_get(port: int, method: str = "GET") -> tuple[int, bytes, bytes]:
    """An HTTPS request as the kubelet's httpGet probe makes it: no client certificate, no verification."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, context.wrap_socket(raw) as sock:
        sock.sendall(f"{method} /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head.lower(), body


def test_the_probe_imports_the_standard_library_and_tidal_config_only() -> None:
    code = "import sys, tidal.probe; print('\\n'.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert {m for m in loaded if m.split(".")[0] == "tidal"} <= ALLOWED_TIDAL
    assert not [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert PROBE.is_file(), "the tidal-probe console script (pyproject.toml [project.scripts])"


def test_healthz_follows_the_grpc_health_status_through_start_serving_and_drain(pki: Path) -> None:
    server_security = SecurityConfig.from_env({"TIDAL_TLS_DIR": str(pki)}, default_name="coordinator")
    client_security = SecurityConfig.from_env({"TIDAL_TLS_DIR": str(pki)}, default_name="admin")

    async def scenario() -> None:
        server, grpc_port = create_server("127.0.0.1:0", server_security)
        health = add_health_and_reflection(server, SERVICES)
        await set_health(health, SERVICES, serving=False)
        await server.start()
        metrics, task, port = serve_metrics(CollectorRegistry(), "127.0.0.1", 0, server_security, health=health)
        address = f"127.0.0.1:{grpc_port}"
        try:  # the socket listens already: connections wait for uvicorn's first accept
            # Starting: NOT_SERVING for gRPC, the probe and the kubelet alike.
            assert await check_health(address, client_security) == "NOT_SERVING"
            assert await run_probe_async(pki, port) == (
                1,
                f"NOT_SERVING (127.0.0.1:{port}/healthz: HTTP/1.1 503 Service Unavailable)",
            )
            assert (await asyncio.to_thread(kubelet_get, port))[::2] == (503, b"NOT_SERVING\n")
            await set_health(health, SERVICES, serving=True)
            assert await check_health(address, client_security) == "SERVING"
            assert await run_probe_async(pki, port) == (0, "SERVING")
            status, head, body = await asyncio.to_thread(kubelet_get, port)
            assert (status, body) == (200, b"SERVING\n")
            assert b"cache-control: no-store" in head
            status, head, _ = await asyncio.to_thread(kubelet_get, port, "POST")
            assert status == 405 and b"allow: get, head" in head
            # SIGTERM: the drain sets NOT_SERVING first; every probe fails from then on.
            await set_health(health, SERVICES, serving=False)
            assert await check_health(address, client_security) == "NOT_SERVING"
            assert (await run_probe_async(pki, port))[0] == 1
            await set_health(health, SERVICES, serving=True)
            await health.enter_graceful_shutdown()
            assert (await run_probe_async(pki, port))[0] == 1
            assert (await asyncio.to_thread(kubelet_get, port))[0] == 503
        finally:
            metrics.should_exit = True
            await task
            await server.stop(None)

    asyncio.run(scenario())


def test_a_service_of_another_ca_fails_the_probe(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    create_bundle(other)
    security = SecurityConfig.from_env({"TIDAL_TLS_DIR": str(other)}, default_name="coordinator")

    async def scenario() -> subprocess.CompletedProcess[str]:
        server, _ = create_server("127.0.0.1:0", security)
        health = add_health_and_reflection(server, SERVICES)
        await set_health(health, SERVICES, serving=True)
        metrics, task, port = serve_metrics(CollectorRegistry(), "127.0.0.1", 0, security, health=health)
        try:
            return await asyncio.to_thread(run_probe, "--port", str(port), TIDAL_TLS_DIR=str(pki))
        finally:
            metrics.should_exit = True
            await task

    result = asyncio.run(scenario())
    assert result.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in result.stdout


def test_a_ready_file_names_the_port_and_its_absence_is_not_ready(tmp_path: Path, pki: Path) -> None:
    ready = tmp_path / "ready.json"
    result = run_probe("--ready-file", str(ready), TIDAL_TLS_DIR=str(pki))
    assert (result.returncode, result.stdout.strip()) == (1, f"not ready: {ready} does not exist (yet)")
    with socket.socket() as unused:  # bound, never listening: the connection is refused
        unused.bind(("127.0.0.1", 0))
        ready.write_text(json.dumps({"metrics_port": unused.getsockname()[1]}))
        result = run_probe("--ready-file", str(ready), TIDAL_TLS_DIR=str(pki))
    assert result.returncode == 1
    assert "Connection refused" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {"TIDAL_ALLOW_PLAINTEXT": "1"}, "TIDAL_METRICS_PORT: expected the service's /metrics port, got ''"),
        ((), {"TIDAL_METRICS_PORT": "http", "TIDAL_ALLOW_PLAINTEXT": "1"}, "TIDAL_METRICS_PORT: expected the service"),
        (("--port", "70000"), {"TIDAL_ALLOW_PLAINTEXT": "1"}, "--port: expected a port from 1 to 65535, got 70000"),
        (("--port", "9464", "--timeout", "0"), {}, "--timeout: expected seconds above 0, got 0.0"),
        (("--port", "9464"), {}, "TIDAL_TLS_DIR: no CA to verify the service with"),
        (("--port", "9464"), {"TIDAL_ALLOW_PLAINTEXT": "maybe"}, "TIDAL_ALLOW_PLAINTEXT: expected 1/true/yes/on"),
        (
            ("--port", "9464"),
            {"TIDAL_TLS_DIR": "/nonexistent"},
            "TIDAL_TLS_DIR: cannot read the CA /nonexistent/ca.crt",
        ),
        (("--port", "9464"), {"TIDAL_TLS_CERT": "/x.crt"}, "TIDAL_TLS_CA: TLS is set up but there is no CA"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag_or_variable(
    args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = run_probe(*args, **env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"tidal-probe: {message}")
    assert result.stderr.count("\n") == 1


def test_bad_ready_file_names_it(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    ready.write_text("{}")
    result = run_probe("--ready-file", str(ready), TIDAL_ALLOW_PLAINTEXT="1")
    assert result.returncode == 2
    assert result.stderr.startswith(f"tidal-probe: --ready-file: no metrics_port in {ready}")
