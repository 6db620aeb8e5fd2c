"""`tidal coordinator`: its options, the checks of its one-job options, and its start. `register`
adds it to the `tidal` app (cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tidal.cli_common import (
    AllowPlaintext,
    Host,
    LogLevel,
    MetricsPort,
    Port,
    ReadyFile,
    ScrapeTargetDir,
    build_cluster_env,
    build_security,
    metrics_port_or_default,
    process_setup,
    run_async,
)
from tidal.config import DEFAULT_COORDINATOR_METRICS_PORT, DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, ENV
from tidal.core.errors import TidalError

if TYPE_CHECKING:
    from tidal.coordinator.one_job import OneJob
    from tidal.transport.tls import SecurityConfig


def register(app: typer.Typer) -> None:
    """Adds `coordinator` to `app`."""
    app.command()(coordinator)


def _coordinator_setup(log_level: str, allow_plaintext: bool) -> SecurityConfig:
    # No torch here: the coordinator plans jobs from the layout its workers announce.
    security = build_security("coordinator", allow_plaintext, server=True)
    process_setup("coordinator", log_level)
    return security


def coordinator(
    host: Host = "0.0.0.0",
    port: Port = DEFAULT_GRPC_PORT,
    metrics_port: MetricsPort = None,
    http_port: Annotated[
        int, typer.Option(envvar=ENV["http_port"], min=0, max=65535, help="REST port (0 = any).")
    ] = DEFAULT_HTTP_PORT,
    heartbeat_interval: Annotated[
        float, typer.Option(envvar=ENV["heartbeat_interval"], min=0.05, help="Seconds between member heartbeats.")
    ] = 1.0,
    heartbeat_timeout: Annotated[
        float,
        typer.Option(
            envvar=ENV["heartbeat_timeout"], min=0.1, help="Silence, in seconds, before a member is declared failed."
        ),
    ] = 10.0,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=ENV["state_dir"],
            help="Save jobs and membership in an SQLite file here; a restarted coordinator adopts them "
            "and its members resume their jobs (default: state in memory only).",
        ),
    ] = None,
    job_file: Annotated[
        Path | None,
        typer.Option(envvar=ENV["job_file"], help="Job spec to submit at start; it runs once enough members joined."),
    ] = None,
    exit_when_done: Annotated[
        bool,
        typer.Option(
            envvar=ENV["exit_when_done"],
            help="Exit once the --job-file job ended and its members left (0 if it succeeded).",
        ),
    ] = False,
    scale_down: Annotated[
        str,
        typer.Option(
            envvar=ENV["scale_down"],
            help="Kubernetes only, with --exit-when-done: KIND/NAME,... (statefulset, deployment) to scale to 0 "
            "before exiting, with the pod's service account.",
        ),
    ] = "",
    control_fault: Annotated[
        str, typer.Option(envvar=ENV["control_fault"], hidden=True, help="Tests only: crash the control loop.")
    ] = "",
    ready_file: ReadyFile = None,
    scrape_target_dir: ScrapeTargetDir = None,
    log_level: LogLevel = "INFO",
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """Run the coordinator (membership, jobs, gRPC + REST API)."""
    from tidal.coordinator.main import run_coordinator  # noqa: PLC0415

    one_job = _one_job(job_file, exit_when_done, scale_down)
    fault = _control_fault(control_fault)
    security = _coordinator_setup(log_level, allow_plaintext)
    raise typer.Exit(
        run_async(
            run_coordinator(
                host,
                port,
                http_port,
                metrics_port_or_default(metrics_port, DEFAULT_COORDINATOR_METRICS_PORT),
                heartbeat_interval,
                heartbeat_timeout,
                ready_file,
                one_job,
                state_dir,
                fault,
                security=security,
                scrape_target_dir=scrape_target_dir,
            )
        )
    )


def _control_fault(text: str) -> str:
    from tidal.core.faults import parse_coordinator_fault  # noqa: PLC0415

    try:
        return parse_coordinator_fault(text)
    except TidalError as exc:
        raise typer.BadParameter(str(exc), param_hint="--control-fault") from None


def _one_job(job_file: Path | None, exit_when_done: bool, scale_down: str) -> OneJob | None:
    """Checks the one-job options before anything starts: a bad spec is one line and exit 2."""
    from tidal.client import load_spec_file  # noqa: PLC0415
    from tidal.coordinator.one_job import OneJob  # noqa: PLC0415
    from tidal.core.spec import parse_job_spec  # noqa: PLC0415
    from tidal.k8s_scale import parse_targets  # noqa: PLC0415

    if job_file is None:
        if exit_when_done or scale_down:
            raise typer.BadParameter("needs --job-file", param_hint="--exit-when-done/--scale-down")
        return None
    if scale_down and not exit_when_done:
        raise typer.BadParameter("needs --exit-when-done", param_hint="--scale-down")
    try:
        spec_json = json.dumps(load_spec_file(job_file))
        parse_job_spec(spec_json)
        targets = parse_targets(scale_down)
    except TidalError as exc:
        raise typer.BadParameter(str(exc), param_hint="--job-file/--scale-down") from None
    return OneJob(spec_json, exit_when_done, targets, build_cluster_env() if targets else {})
