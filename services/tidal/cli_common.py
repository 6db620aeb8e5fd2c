"""What the `tidal` commands share: option types, one-line error reporting, TLS and token set-up."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from tidal.config import ENV
from tidal.core.errors import TidalError

err = Console(stderr=True)
T = TypeVar("T")

Coordinator = Annotated[
    str, typer.Option("--coordinator", envvar=ENV["coordinator"], help="Coordinator gRPC address host:port.")
]
Host = Annotated[str, typer.Option(envvar=ENV["host"], help="Interface to bind.")]
ReadyFile = Annotated[Path | None, typer.Option(help="Write the bound ports here as JSON once serving.")]
LogLevel = Annotated[str, typer.Option(envvar=ENV["log_level"], help="DEBUG, INFO, WARNING or ERROR.")]
Threads = Annotated[int, typer.Option(envvar=ENV["torch_threads"], min=1, help="torch intra-op threads.")]
MetricsPort = Annotated[
    int, typer.Option(envvar=ENV["metrics_port"], min=0, max=65535, help="Port of /metrics (0 = any).")
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


def install_security(role: str, allow_plaintext: bool, server: bool, command: str = "") -> None:
    """TLS and tokens from TIDAL_TLS_* / TIDAL_TOKEN* (transport/tls.py). Without TLS the command
    refuses to run unless plaintext was asked for; a bad or missing setting is one line, exit 2."""
    import dataclasses  # noqa: PLC0415
    import os  # noqa: PLC0415

    from tidal.transport import tls  # noqa: PLC0415

    try:
        config = tls.SecurityConfig.from_env(os.environ, default_name=role)
        config = dataclasses.replace(config, allow_plaintext=config.allow_plaintext or allow_plaintext)
        tls.require_secure(config, f"tidal {command or role}", server)
        tls.install(config)
    except TidalError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
