"""Configuration as one object: built once at start from flags and the environment (cli_common.py)
and passed down. Nothing reads a module global or the environment behind its caller's back."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tidal import cli_common
from tidal.cli import app
from tidal.client import TidalClient, check_health
from tidal.climate.params import read_job_parameters
from tidal.config import SECURITY_ENV
from tidal.coordinator.main import run_coordinator
from tidal.coordinator.rest import create_app
from tidal.core.errors import InvalidArgumentError
from tidal.shard.main import run_shard
from tidal.shard.servicer import ShardServicer
from tidal.transport import tls
from tidal.transport.http import serve_asgi
from tidal.transport.member import serve_member
from tidal.transport.metrics import serve_metrics
from tidal.transport.server import create_channel, create_server
from tidal.transport.session import MemberSession
from tidal.transport.settings import ServiceSettings
from tidal.transport.tls import SecurityConfig
from tidal.worker.links import ShardLink
from tidal.worker.loop import TrainingRun
from tidal.worker.main import WorkerNode, run_worker

SERVICES = Path(tls.__file__).resolve().parents[1]  # services/tidal

# Where the environment may be read: the CLI builds the configuration there, and so does the
# Python API's `tidal.connect` (a script's entry point) for a client given no SecurityConfig, in
# `security_from_env` only (checked below).
READERS = {"cli_common.py", "api/sync_client.py", "probe.py"}
# The program's start may set a default for its children (GRPC_ENABLE_FORK_SUPPORT).
WRITERS = {"__main__.py"}


def test_tls_has_no_process_wide_setting() -> None:
    for name in ("current", "install", "_current"):
        assert not hasattr(tls, name), name


def test_a_server_or_channel_without_a_security_config_is_refused() -> None:
    with pytest.raises(TypeError):
        create_server("127.0.0.1:0")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        create_channel("127.0.0.1:1")  # type: ignore[call-arg]


# Everything that serves or dials, and what it is handed its settings in.
TAKES_SECURITY: list[Callable[..., Any]] = [
    create_server, create_channel, serve_asgi, serve_metrics, create_app, MemberSession, ShardLink, TidalClient,
    check_health, read_job_parameters, serve_member, run_coordinator,
]  # fmt: skip
TAKES_SETTINGS: list[Callable[..., Any]] = [run_shard, run_worker, WorkerNode, TrainingRun]


@pytest.mark.parametrize("factory", TAKES_SECURITY, ids=lambda f: f.__qualname__)
def test_every_factory_takes_the_security_config_explicitly(factory: Callable[..., Any]) -> None:
    parameter = inspect.signature(factory).parameters["security"]
    assert parameter.default is inspect.Parameter.empty, f"{factory.__qualname__}: security has a default"


@pytest.mark.parametrize("factory", TAKES_SETTINGS, ids=lambda f: f.__qualname__)
def test_shards_and_workers_take_their_settings_explicitly(factory: Callable[..., Any]) -> None:
    assert inspect.signature(factory).parameters["settings"].default is inspect.Parameter.empty


@pytest.mark.parametrize("factory", [ShardLink, ShardServicer], ids=lambda f: f.__qualname__)
def test_shared_memory_is_a_parameter_not_an_environment_read(factory: Callable[..., Any]) -> None:
    assert inspect.signature(factory).parameters["shared_memory"].default is inspect.Parameter.empty


def test_settings_are_frozen_and_checked() -> None:
    settings = ServiceSettings(SecurityConfig(), shared_memory=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.shared_memory = True  # type: ignore[misc]
    with pytest.raises(InvalidArgumentError, match="shared_memory: expected a bool, got 'off'"):
        ServiceSettings(SecurityConfig(), "off")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="security: expected a SecurityConfig"):
        ServiceSettings(None, True)  # type: ignore[arg-type]
    assert ServiceSettings(SecurityConfig(), False).model_modules is None  # unset: any module
    with pytest.raises(InvalidArgumentError, match="model_modules: expected None or a tuple of str"):
        ServiceSettings(SecurityConfig(), False, "pkg")  # type: ignore[arg-type]


def test_the_cli_builds_the_model_modules_into_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in SECURITY_ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(SECURITY_ENV["model_modules"], "mymodels, lab.nets")
    settings = cli_common.build_service_settings("shard", allow_plaintext=True, shared_memory="off")
    assert settings.model_modules == ("mymodels", "lab.nets")


def _environment_uses(tree: ast.AST) -> tuple[int, int]:
    """(reads, hand-overs) of os.environ / os.getenv in a module. Handing the whole environment
    to a child process (`env=...`, `{**os.environ}`) is no read: the child builds its own."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    reads = handed = 0
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"):
            continue
        if node.attr not in ("environ", "getenv"):
            continue
        below, up = node, parents.get(node)
        while up is not None and not isinstance(up, ast.keyword | ast.Dict | ast.stmt):
            below, up = up, parents.get(up)
        spread = [v for k, v in zip(up.keys, up.values, strict=True) if k is None] if isinstance(up, ast.Dict) else []
        unpacked = any(v is below for v in spread)
        to_child = unpacked or (isinstance(up, ast.keyword) and up.arg == "env")
        handed += to_child
        reads += not to_child
    return reads, handed


def test_only_the_cli_reads_the_environment() -> None:
    readers = set()
    for path in SERVICES.rglob("*.py"):
        reads, _ = _environment_uses(ast.parse(path.read_text(), str(path)))
        if reads:
            readers.add(str(path.relative_to(SERVICES)))
    # Exact: a reader that stopped reading must leave these sets too.
    assert readers - WRITERS == READERS


def test_the_python_api_reads_the_environment_only_to_build_a_clients_security() -> None:
    tree = ast.parse((SERVICES / "api" / "sync_client.py").read_text())
    readers = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and _environment_uses(f)[0]}
    assert readers == {"security_from_env"}


def test_the_scan_tells_a_read_from_a_hand_over() -> None:
    assert _environment_uses(ast.parse("import os\nx = os.environ.get('A')\ny = os.getenv('B')")) == (2, 0)
    assert _environment_uses(ast.parse("import os\nf(x, env={**os.environ, 'A': '1'})")) == (0, 1)
    assert _environment_uses(ast.parse("import os\nf(env=dict(os.environ if e is None else e))")) == (0, 1)
    assert _environment_uses(ast.parse("import os\ndef f(e=os.environ): ...")) == (1, 0)
    assert _environment_uses(ast.parse("import os\nd = {'A': os.environ['A'], **other}")) == (1, 0)


def test_importing_tidal_changes_no_environment() -> None:
    script = (
        "import os\n"
        "before = dict(os.environ)\n"
        "import tidal, tidal.cli, tidal.transport.server, tidal.transport.shm, tidal.shard.main, tidal.worker.main\n"
        "import tidal.coordinator.main\n"
        "print(dict(os.environ) == before)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr


def _text(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--shared-memory", "maybe"], {}), ([], {"TIDAL_SHARED_MEMORY": "maybe"})],
    ids=["flag", "variable"],
)
def test_a_bad_shared_memory_setting_stops_the_service_before_it_starts(args: list[str], env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["worker", "--allow-plaintext", *args], env=env)
    assert result.exit_code == 2, result.output
    assert "expected auto or off, got 'maybe'" in _text(result.output)


def test_the_cli_builds_the_settings_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in SECURITY_ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TIDAL_TOKEN", "secret-token")
    settings = cli_common.build_service_settings("worker", allow_plaintext=True, shared_memory="off")
    assert settings == ServiceSettings(SecurityConfig(token="secret-token", allow_plaintext=True), shared_memory=False)
    # Built, not installed: building again with other variables changes nothing already built.
    monkeypatch.setenv("TIDAL_TOKEN", "another")
    assert cli_common.build_security("admin", True, server=False).token == "another"
    assert settings.security.token == "secret-token"
