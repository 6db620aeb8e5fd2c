"""Reads the deployment files the way their tools do, and what the `tidal` CLI accepts.

The CLI side is introspected from the typer app (options, environment variables, their types),
never restated here, so a flag renamed in the CLI (cli*.py) makes the deployment tests fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import typer
import yaml
from typer.exceptions import TyperException

from tidal.cli import app
from tidal.config import SECURITY_ENV
from tidal.security.bundle import create_bundle, split_bundle

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_OVERRIDE = ROOT / "docker-compose.override.yml"
HOST_NETWORK = ROOT / "deploy" / "compose" / "host-network.yml"
# Every variable of the compose files, with the files' defaults (operators copy it to .env).
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
MONITORING = K8S / "components" / "monitoring"
# User code on the workers only (docs/bring-your-own.md): compose override, component, image.
BYO_COMPOSE = ROOT / "deploy" / "compose" / "byo-workers.yml"
BYO_COMPONENT = K8S / "components" / "byo-workers"
BYO_DOCKERFILE = ROOT / "deploy" / "docker" / "byo-worker.Dockerfile"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
HOST_NETWORK_PROMETHEUS = ROOT / "deploy" / "prometheus" / "host-network.yml"


def require_tool(name: str) -> str:
    """The tool's path; a missing tool skips the test locally and fails it under CI=true."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found on PATH (scripts/ensure-test-deps.sh installs what Debian packages)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# --- the CLI ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One `tidal` subcommand as click (typer's own copy of it) sees it."""

    name: str
    cmd: Any
    # Every option string ("--port", "--exit-after-job", "--no-exit-after-job").
    options: frozenset[str]
    # Every environment variable it reads.
    env: frozenset[str]


# Commands with this option serve or call gRPC and read the security variables
# (transport/tls.py: SecurityConfig.from_env) besides their own options' variables.
SECURE_OPTION = "--allow-plaintext"


@cache
def cli_commands() -> dict[str, Command]:
    group = typer.main.get_command(app)
    commands = {}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        options = {opt for param in cmd.params for opt in [*param.opts, *param.secondary_opts]}
        env = set()
        for param in cmd.params:
            env.update(
                param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar] if param.envvar else []
            )
        if SECURE_OPTION in options:
            env.update(SECURITY_ENV.values())
        commands[name] = Command(name, cmd, frozenset(options), frozenset(env))
    return commands


def check_invocation(args: list[str], env: dict[str, str], where: str) -> tuple[Command, dict[str, Any]]:
    """Parses `tidal ARGS` with `env` exactly as the CLI would (flags, values, ranges, booleans,
    environment variables), without running it; fails on anything the CLI would refuse or
    silently ignore (a TIDAL_* variable the command does not read). Returns the parsed values."""
    commands = cli_commands()
    assert args, f"{where}: no command"
    assert args[0] in commands, f"{where}: `tidal {args[0]}` is not a command ({sorted(commands)})"
    command = commands[args[0]]
    tidal_env = {k: v for k, v in env.items() if k.startswith("TIDAL_")}
    for name in tidal_env:
        assert name in command.env, f"{where}: `tidal {command.name}` reads no {name}"
    for arg in args[1:]:
        if arg.startswith("--"):
            assert arg.partition("=")[0] in command.options, f"{where}: `tidal {command.name}` has no option {arg}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    with mock.patch.dict(os.environ, {**clean, **tidal_env}, clear=True):
        try:
            with command.cmd.make_context(command.name, list(args[1:])) as ctx:
                return command, dict(ctx.params)
        except TyperException as exc:  # the CLI's UsageError/BadParameter (typer's copy of click)
            raise AssertionError(f"{where}: `tidal {' '.join(args)}` with {tidal_env}: {exc}") from None


# --- docker compose --------------------------------------------------------------------
def _merge(base: Any, override: Any, key: str = "") -> Any:
    """Compose's merge for what our files use: mappings merge key by key, a service's volumes by
    the path they are mounted at, the rest is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            merged[name] = _merge(base.get(name), value, name) if name in base else value
        return merged
    if key == "volumes" and isinstance(base, list) and isinstance(override, list):
        targets = {v.split(":")[1] for v in override}
        return [v for v in base if v.split(":")[1] not in targets] + override
    return override


# ${NAME:-default} as compose interpolates it; $${...} is compose's escape for a literal ${...}.
_VARIABLE = re.compile(r"(?<!\$)\$\{(\w+):-([^}]*)\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """`value` with every ${NAME:-default} replaced as compose would with `env` (as .env)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: env.get(m.group(1)) or m.group(2), value)
    return value


def compose_model(*files: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose model of `files` (YAML anchors and merge keys resolved, later files win),
    with the variables of `env` (default: none set, so every ${NAME:-default} is its default)."""
    model: dict[str, Any] = {}
    for path in files:
        model = _merge(model, yaml.safe_load(path.read_text()))
    return interpolate(model, env or {})


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def tidal_services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run tidal's image."""
    image = model["services"]["coordinator"]["image"]
    return {name: s for name, s in model["services"].items() if s.get("image") == image}


def healthcheck_port_var(service: dict[str, Any]) -> str | None:
    """The variable the healthcheck reads the port from: TIDAL_METRICS_PORT for a plain
    `tidal-probe` (services/tidal/probe.py), None for any other kind (a ready file's port)."""
    test = service.get("healthcheck", {}).get("test", [])
    return "TIDAL_METRICS_PORT" if test == ["CMD", "tidal-probe"] else None


# --- Kubernetes ------------------------------------------------------------------------
def kustomize(path: Path, components: tuple[Path, ...] = (), workdir: Path | None = None) -> list[dict[str, Any]]:
    """`kubectl kustomize` of an overlay, optionally with components (through a kustomization
    in `workdir` that names them by relative path, as a user's own overlay would)."""
    kubectl = require_tool("kubectl")
    target = path
    if components:
        assert workdir is not None
        rel = [os.path.relpath(p, workdir) for p in (path, *components)]
        (workdir / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [rel[0]],
                    "components": rel[1:],
                }
            )
        )
        target = workdir
    done = subprocess.run([kubectl, "kustomize", str(target)], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {target}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def named_mounts(service: dict[str, Any], volumes: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (named volume, read-only) for a compose service's named-volume mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source in volumes:
            out[target] = (source, "ro" in mode)
    return out


def secret_mounts(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (Secret name, read-only) for a Kubernetes container's Secret volumes."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    return {
        m["mountPath"]: (secrets[m["name"]], bool(m.get("readOnly")))
        for m in container.get("volumeMounts", [])
        if m["name"] in secrets
    }


def render_tls_secrets(pki: Path, sans: list[str]) -> dict[str, dict[str, Any]]:
    """Runs `tidal certs --split` into `pki`, then deploy/k8s/tls-secrets.sh on it (kubectl
    --dry-run=client, offline); returns the Secrets it prints, by name."""
    kubectl = require_tool("kubectl")
    create_bundle(pki, sans=sans)
    split_bundle(pki)
    done = subprocess.run(
        ["bash", str(K8S / "tls-secrets.sh"), str(pki)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECTL": kubectl},
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert docs[0]["kind"] == "Namespace"
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}


def documented_sans() -> list[str]:
    """The SANs deploy/k8s/tls-secrets.sh tells operators to give `tidal certs`."""
    return [san.strip("'") for san in re.findall(r"--san (\S+)", (K8S / "tls-secrets.sh").read_text())]
