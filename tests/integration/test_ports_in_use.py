"""A port another process holds stops a service with one line naming the flag and its variable,
exit code non-zero and no traceback; a role's default /metrics port yields to a free one instead
(the README's second shard and worker: tests/integration/test_readme_using_it.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

TIMEOUT_S = 120.0


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _coordinator(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    command = [sys.executable, "-m", "tidal", "coordinator", "--host", "127.0.0.1", "--allow-plaintext", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


@pytest.mark.parametrize(
    ("flag", "variable", "others"),
    [
        ("--metrics-port", "TIDAL_METRICS_PORT", ["--port", "0", "--http-port", "0"]),
        ("--http-port", "TIDAL_HTTP_PORT", ["--port", "0", "--metrics-port", "0"]),
        ("--port", "TIDAL_PORT", ["--http-port", "0", "--metrics-port", "0"]),
    ],
)
def test_a_port_in_use_is_one_line_naming_the_flag(held_port: int, flag: str, variable: str, others: list[str]) -> None:
    done = _coordinator(flag, str(held_port), *others)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert f"{flag} / {variable}" in errors[0]
    assert str(held_port) in errors[0]


def test_a_worker_given_a_metrics_port_in_use_stops_with_one_line(held_port: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    command = [sys.executable, "-m", "tidal", "worker", "--host", "127.0.0.1", "--port", "0", "--allow-plaintext"]
    command += ["--coordinator", "127.0.0.1:1", "--metrics-port", str(held_port)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --metrics-port / TIDAL_METRICS_PORT: port {held_port} on 127.0.0.1 is already in use (another tidal "
        "service on this host?); choose another port, or 0 for any free one"
    ], done.stderr


def test_a_shard_given_a_bulk_port_in_use_stops_with_one_line(held_port: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    command = [sys.executable, "-m", "tidal", "shard", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    command += ["--allow-plaintext", "--coordinator", "127.0.0.1:1", "--bulk-port", str(held_port)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --bulk-port / TIDAL_BULK_PORT: cannot bind port {held_port} on 127.0.0.1 (Address already in use; "
        "another tidal shard on this host?); choose another port, or 0 for any free one"
    ], done.stderr
