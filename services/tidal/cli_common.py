"""What the `tidal` commands share: option types, one-line error reporting, and the building of a
process's configuration (TLS, tokens, shared memory) from its flags and environment, once, at start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from tidal.config import ENV
from tidal.core.errors import TidalError

if TYPE_CHECKING:
    from tidal.core.model_source import ModelModules
    from tidal.transport.metrics import PreferredPort
    from tidal.transport.settings import ServiceSettings
    from tidal.transport.tls import SecurityConfig

err = Console(stderr=True)
T = TypeVar("T")

Coordinator = Annotated[
    str, typer.Option("--coordinator", envvar=ENV["coordinator"], help="Coordinator gRPC address host:port.")
]
Host = Annotated[str, typer.Option(envvar=ENV["host"], help="Interface to bind.")]
ReadyFile = Annotated[Path | None, typer.Option(help="Write the bound ports here as JSON once serving.")]
LogLevel = Annotated[str, typer.Option(envvar=ENV["log_level"], help="DEBUG, INFO, WARNING or ERROR.")]
Threads = Annotated[int, typer.Option(envvar=ENV["torch_threads"], min=1, help="torch intra-op threads.")]
Name = Annotated[
    str,
    typer.Option(envvar=ENV["name"], help="This member's name in status, logs and errors (default: the host name)."),
]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        envvar=ENV["metrics_port"],
        min=0,
        max=65535,
        show_default=False,
        help="Port of /metrics (0 = any). Default: the role's port (9464 coordinator, 9465 shard, 9466 worker), "
        "or any free port when another service on the host holds it.",
    ),
]
ScrapeTargetDir = Annotated[
    Path | None,
    typer.Option(
        envvar=ENV["scrape_target_dir"],
        help="Write ROLE-PORT.json here once serving: where /metrics is, for Prometheus' file_sd_configs "
        "(deploy/prometheus/host-network.yml).",
    ),
]
Port = Annotated[int, typer.Option(envvar=ENV["port"], min=0, max=65535, help="gRPC port to bind (0 = any).")]
ExitAfterJob = Annotated[
    bool,
    typer.Option(envvar=ENV["exit_after_job"], help="Exit (code 0) when the first job this member works on ends."),
]
AllowPlaintext = Annotated[
    bool,
    typer.Option(
        "--allow-plaintext",
        envvar=ENV["allow_plaintext"],
        help="Run without TLS, for a local experiment (logged loudly). Without it, a command with no TLS "
        "configuration (TIDAL_TLS_DIR or TIDAL_TLS_CA/_CERT/_KEY, docs/security.md) refuses to start.",
    ),
]
SharedMemory = Annotated[
    str,
    typer.Option(
        "--shared-memory",
        envvar=ENV["shared_memory"],
        help="auto: tensors move through /dev/shm between a worker and a shard on one host; off: never.",
    ),
]
BulkChannel = Annotated[
    str,
    typer.Option(
        "--bulk-channel",
        envvar=ENV["bulk_channel"],
        help="on: tensors between a worker and a shard on another host travel on a socket of their own beside "
        "the gRPC stream (a worker asks, a shard offers; TLS as gRPC); off: inline in the gRPC messages.",
    ),
]
BulkPort = Annotated[
    int,
    typer.Option(
        "--bulk-port", envvar=ENV["bulk_port"], min=0, max=65535,
        help="Port of the shard's bulk channel (0: any free one).",
    ),
]  # fmt: skip
RegisterTimeout = Annotated[
    float,
    typer.Option(
        "--register-timeout",
        envvar=ENV["register_timeout"],
        min=0.1,
        help="Seconds to keep retrying the coordinator at start-up.",
    ),
]


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine; a TidalError becomes one readable line and exit code 1."""
    try:
        return asyncio.run(coro)
    except TidalError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _fail_setup(exc: TidalError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def build_security(role: str, allow_plaintext: bool, server: bool, command: str = "") -> SecurityConfig:
    """The process's transport security, from TIDAL_TLS_* / TIDAL_TOKEN* (transport/tls.py) and
    --allow-plaintext. Without TLS the command refuses to run unless plaintext was asked for; a
    bad or missing setting is one line, exit 2."""
    from tidal.transport import tls  # noqa: PLC0415  # grpc only once a command runs, not for --help

    try:
        config = tls.SecurityConfig.from_env(os.environ, default_name=role)
        config = dataclasses.replace(config, allow_plaintext=config.allow_plaintext or allow_plaintext)
        tls.require_secure(config, f"tidal {command or role}", server)
    except TidalError as exc:
        raise _fail_setup(exc) from None
    return config


def build_service_settings(
    role: str,
    allow_plaintext: bool,
    shared_memory: str,
    device: str | None = None,
    bulk_channel: str = "off",
    bulk_port: int = 0,
) -> ServiceSettings:
    """A shard's or worker's settings (transport/settings.py); a bad one is one line, exit 2."""
    from tidal.transport import bulk, shm  # noqa: PLC0415  # torch only for the services
    from tidal.transport.settings import ServiceSettings  # noqa: PLC0415

    security = build_security(role, allow_plaintext, server=True)
    try:
        return ServiceSettings(
            security, shm.parse_setting(shared_memory), build_model_modules(), device,
            bulk.parse_setting(bulk_channel), bulk_port,
        )  # fmt: skip
    except TidalError as exc:
        raise _fail_setup(exc) from None


def build_model_modules() -> ModelModules:
    """The packages a job's model factory may come from: TIDAL_MODEL_MODULES (core/model_source.py)."""
    from tidal.core.model_source import allowed_prefixes  # noqa: PLC0415

    return allowed_prefixes(os.environ)


def build_malloc_tuning() -> bool:
    """Whether to raise glibc's malloc thresholds (transport/process.py): TIDAL_MALLOC_TUNING and
    glibc's own MALLOC_* variables decide."""
    from tidal.transport.process import malloc_tuning_wanted  # noqa: PLC0415

    return malloc_tuning_wanted(os.environ)


def build_arena_limit() -> bool:
    """Whether a shard caps glibc's malloc arenas (shard/memory.py): TIDAL_MALLOC_TUNING and
    MALLOC_ARENA_MAX decide."""
    from tidal.shard.memory import arena_limit_wanted  # noqa: PLC0415

    return arena_limit_wanted(os.environ)


def build_cluster_env() -> dict[str, str]:
    """The pod's Kubernetes variables (k8s_scale.CLUSTER_ENV), for a one-job coordinator's scale-down."""
    from tidal.k8s_scale import CLUSTER_ENV  # noqa: PLC0415

    return {name: os.environ[name] for name in CLUSTER_ENV if name in os.environ}


def process_setup(role: str, log_level: str) -> None:
    """Logging and malloc: what every service process sets up before it serves."""
    from prometheus_client import disable_created_metrics  # noqa: PLC0415

    from tidal.transport.process import setup_logging, tune_malloc  # noqa: PLC0415

    setup_logging(role, log_level)
    tune_malloc(build_malloc_tuning())
    # `_created` series double every counter's cardinality and no dashboard uses them.
    disable_created_metrics()


def metrics_port_or_default(given: int | None, default: int) -> int | PreferredPort:
    """--metrics-port as given, or the role's default, which yields to another service on the host."""
    from tidal.transport.metrics import PreferredPort  # noqa: PLC0415  # grpc only once a command runs

    return PreferredPort(default) if given is None else given
