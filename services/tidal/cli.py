"""The `tidal` command: run a service, the demo, or talk to a coordinator."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from tidal.climate.cli import climate_app
from tidal.config import (
    DEFAULT_COORDINATOR,
    DEFAULT_COORDINATOR_METRICS_PORT,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_SHARD_METRICS_PORT,
    DEFAULT_SHARD_PORT,
    DEFAULT_WORKER_METRICS_PORT,
    DEFAULT_WORKER_PORT,
    ENV,
)
from tidal.core.errors import TidalError
from tidal.progress import stdout_console

if TYPE_CHECKING:
    from tidal.coordinator.one_job import OneJob

app = typer.Typer(
    help="tidal: distributed PyTorch training with a parameter server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(climate_app, name="climate")
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


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine; a TidalError becomes one readable line and exit code 1."""
    try:
        return asyncio.run(coro)
    except TidalError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _service_setup(role: str, log_level: str, threads: int, allow_plaintext: bool) -> None:
    import torch  # noqa: PLC0415  # the client commands start faster without torch
    from prometheus_client import disable_created_metrics  # noqa: PLC0415

    from tidal.transport.process import setup_logging, tune_malloc  # noqa: PLC0415

    _install_security(role, allow_plaintext, server=True)
    if role in ("shard", "worker"):
        _check_shared_memory_setting()
    setup_logging(role, log_level)
    tune_malloc()
    torch.set_num_threads(threads)
    # `_created` series double every counter's cardinality and no dashboard uses them.
    disable_created_metrics()


def _check_shared_memory_setting() -> None:
    from tidal.transport import shm  # noqa: PLC0415

    try:
        shm.enabled()
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def coordinator(
    host: Host = "0.0.0.0",
    port: Port = DEFAULT_GRPC_PORT,
    metrics_port: MetricsPort = DEFAULT_COORDINATOR_METRICS_PORT,
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
    ready_file: ReadyFile = None,
    log_level: LogLevel = "INFO",
    torch_threads: Threads = 1,
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """Run the coordinator (membership, jobs, gRPC + REST API)."""
    from tidal.coordinator.main import run_coordinator  # noqa: PLC0415

    one_job = _one_job(job_file, exit_when_done, scale_down)
    _service_setup("coordinator", log_level, torch_threads, allow_plaintext)
    raise typer.Exit(
        _run(
            run_coordinator(
                host, port, http_port, metrics_port, heartbeat_interval, heartbeat_timeout, ready_file, one_job,
                state_dir,
            )
        )
    )


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
    return OneJob(spec_json, exit_when_done, targets)


@app.command()
def shard(
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    host: Host = "0.0.0.0",
    port: Port = DEFAULT_SHARD_PORT,
    metrics_port: MetricsPort = DEFAULT_SHARD_METRICS_PORT,
    advertise_host: Annotated[
        str,
        typer.Option(
            envvar=ENV["advertise_host"], help="Host workers dial (default: --host, or 127.0.0.1 for 0.0.0.0)."
        ),
    ] = "",
    register_timeout: RegisterTimeout = 60.0,
    exit_after_job: ExitAfterJob = False,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=ENV["checkpoint_dir"],
            help="Write checkpoints here (schedule: the job spec's checkpoint block); restarted with the same "
            "folder, the shard restores its job from the newest valid one (default: no checkpoints).",
        ),
    ] = None,
    checkpoint_fault: Annotated[
        str, typer.Option(envvar=ENV["checkpoint_fault"], hidden=True, help="Tests only: crash inside a write.")
    ] = "",
    ready_file: ReadyFile = None,
    log_level: LogLevel = "INFO",
    torch_threads: Threads = 1,
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """Run a parameter shard."""
    from tidal.shard.main import run_shard  # noqa: PLC0415

    _service_setup("shard", log_level, torch_threads, allow_plaintext)
    advertise = advertise_host or (host if host not in ("0.0.0.0", "::") else "127.0.0.1")
    raise typer.Exit(
        _run(
            run_shard(
                coordinator, host, port, metrics_port, advertise, ready_file, register_timeout, exit_after_job,
                checkpoint_dir, checkpoint_fault,
            )
        )
    )


@app.command()
def worker(
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    host: Host = "0.0.0.0",
    port: Port = DEFAULT_WORKER_PORT,
    metrics_port: MetricsPort = DEFAULT_WORKER_METRICS_PORT,
    slowdown: Annotated[
        float, typer.Option(envvar=ENV["slowdown"], min=1.0, help="Simulate a machine this many times slower.")
    ] = 1.0,
    register_timeout: RegisterTimeout = 60.0,
    exit_after_job: ExitAfterJob = False,
    ready_file: ReadyFile = None,
    log_level: LogLevel = "INFO",
    torch_threads: Threads = 1,
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """Run a worker."""
    from tidal.worker.main import run_worker  # noqa: PLC0415

    _service_setup("worker", log_level, torch_threads, allow_plaintext)
    raise typer.Exit(
        _run(run_worker(coordinator, host, port, metrics_port, slowdown, ready_file, register_timeout, exit_after_job))
    )


@app.command()
def demo(
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps per job.")] = 150,
    workdir: Annotated[Path | None, typer.Option(help="Where logs go (default: a temporary folder).")] = None,
    prometheus: Annotated[
        bool, typer.Option(help="Also start a local Prometheus (needs the binary) and keep everything up until Ctrl-C.")
    ] = False,
) -> None:
    """Train on a local cluster (1 coordinator, 2 shards, 3 workers, one 3x slower) in sync then async mode."""
    from tidal.demo import run_demo  # noqa: PLC0415

    raise typer.Exit(run_demo(steps, workdir, prometheus))


@app.command()
def compare(
    spec_file: Annotated[Path, typer.Argument(help="Compare spec, YAML or JSON (see examples/compare/).")],
    out: Annotated[Path | None, typer.Option(help="Report folder (default: compare-<name>).")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Where logs go (default: a temporary folder).")] = None,
) -> None:
    """Run the same job once per mode on a local cluster; write report.md, PNG charts and results.json."""
    from tidal.compare.main import run_compare  # noqa: PLC0415  # matplotlib and torch only when comparing

    raise typer.Exit(_run(run_compare(spec_file, out, workdir, stdout_console())))


@app.command()
def advise(
    spec_file: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON: the job to advise on.")],
    probe_steps: Annotated[int, typer.Option(min=5, max=10_000, help="Steps per worker of the async probe.")] = 30,
    slowdowns: Annotated[
        str | None,
        typer.Option(help="How many times slower each worker's machine is, by rank, e.g. 1,1,4 (default: all 1)."),
    ] = None,
    workdir: Annotated[Path | None, typer.Option(help="Where logs go (default: a temporary folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the advice as JSON on stdout.")] = False,
) -> None:
    """Probe a job on a local cluster and recommend a mode and its parameters, with the reason."""
    from tidal.advise import run_advise  # noqa: PLC0415  # torch and matplotlib only when advising

    factors = None
    if slowdowns is not None:
        try:
            factors = [float(x) for x in slowdowns.split(",")]
        except ValueError:
            err.print(f"[red]error:[/red] --slowdowns: expected numbers separated by commas, got {slowdowns!r}")
            raise typer.Exit(2) from None
        if any(not 1.0 <= f <= 1000.0 for f in factors):
            err.print(f"[red]error:[/red] --slowdowns: every factor must lie in [1, 1000], got {slowdowns!r}")
            raise typer.Exit(2)
    raise typer.Exit(_run(run_advise(spec_file, probe_steps, factors, workdir, as_json, stdout_console(), err)))


@app.command()
def submit(
    spec_file: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON.")],
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    wait: Annotated[bool, typer.Option(help="Wait for the job to end, with a progress bar.")] = False,
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """Submit a job; prints its id."""
    _install_security("admin", allow_plaintext, server=False, command="submit")
    from tidal.client import TidalClient, load_spec_file  # noqa: PLC0415
    from tidal.progress import follow_job  # noqa: PLC0415
    from tidal.v1 import common_pb2 as common_pb  # noqa: PLC0415

    async def go() -> int:
        async with TidalClient(coordinator) as client:
            job = await client.submit(load_spec_file(spec_file))
            print(job.job_id)
            if not wait:
                return 0
            final = await follow_job(client, job.job_id, err)
            return 0 if final.state == common_pb.JOB_STATE_SUCCEEDED else 1

    raise typer.Exit(_run(go()))


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument(help="A job id; all jobs when omitted.")] = None,
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """Show one job, or all jobs."""
    _install_security("admin", allow_plaintext, server=False, command="status")
    from tidal.client import TidalClient, job_state_name  # noqa: PLC0415

    async def go() -> None:
        async with TidalClient(coordinator) as client:
            jobs = [await client.get(job_id)] if job_id else await client.list()
        if as_json:
            print(json.dumps([MessageToDict(j, preserving_proto_field_name=True) for j in jobs], indent=2))
            return
        table = Table("job", "state", "mode", "version", "samples", "train loss", "val acc", "message")
        for j in jobs:
            acc = f"{j.val_accuracy:.3f}" if j.HasField("val_accuracy") else "-"
            table.add_row(
                j.job_id,
                job_state_name(j.state),
                j.mode,
                f"{j.version}/{j.target_version}",
                str(j.samples),
                f"{j.train_loss:.4f}",
                acc,
                j.message,
            )
        stdout_console().print(table)

    _run(go())


@app.command()
def cancel(
    job_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR, allow_plaintext: AllowPlaintext = False
) -> None:
    """Cancel a pending or running job."""
    _install_security("admin", allow_plaintext, server=False, command="cancel")
    from tidal.client import TidalClient, job_state_name  # noqa: PLC0415

    async def go() -> None:
        async with TidalClient(coordinator) as client:
            print(job_state_name((await client.cancel(job_id)).state))

    _run(go())


@app.command()
def cluster(coordinator: Coordinator = DEFAULT_COORDINATOR, allow_plaintext: AllowPlaintext = False) -> None:
    """List the members of the cluster."""
    _install_security("admin", allow_plaintext, server=False, command="cluster")
    from tidal.client import TidalClient  # noqa: PLC0415

    async def go() -> None:
        async with TidalClient(coordinator) as client:
            members = await client.cluster()
        table = Table("member", "role", "state", "address", "name", "job", "heartbeat age (s)")
        for m in members:
            table.add_row(
                m.member_id,
                _enum(m, "role"),
                _enum(m, "state"),
                m.address,
                m.name,
                m.job_id,
                f"{m.heartbeat_age_s:.1f}",
            )
        stdout_console().print(table)

    _run(go())


def _enum(msg: Any, field: str) -> str:
    value = MessageToDict(msg, preserving_proto_field_name=True).get(field, "")
    return str(value).split("_", 1 if field == "role" else 2)[-1].lower()


@app.command()
def health(
    address: Annotated[str, typer.Argument(help="host:port of any tidal service.")],
    service: Annotated[str, typer.Option(help="Service name to check ('' = the whole server).")] = "",
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds.")] = 3.0,
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """grpc.health.v1 check: exit 0 when SERVING (usable as a container healthcheck). It uses the
    same TLS settings as the service it checks (TIDAL_TLS_*)."""
    from tidal.client import check_health  # noqa: PLC0415

    _install_security("admin", allow_plaintext, server=False, command="health")

    result = _run(check_health(address, service, timeout))
    print(result)
    raise typer.Exit(0 if result == "SERVING" else 1)


def _install_security(role: str, allow_plaintext: bool, server: bool, command: str = "") -> None:
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


@app.command()
def certs(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the CA, certificates, keys and tokens.")],
    san: Annotated[
        list[str] | None,
        typer.Option(help="Extra DNS name or IP in every certificate (repeatable; localhost and 127.0.0.1 always)."),
    ] = None,
    extra: Annotated[
        list[str] | None,
        typer.Option(help="Another holder ROLE:NAME, e.g. worker:worker-1 (repeatable)."),
    ] = None,
    valid_days: Annotated[float, typer.Option(min=0.01, help="Validity of the certificates, in days.")] = 365.0,
    force: Annotated[bool, typer.Option(help="Overwrite existing certificates, keys and tokens.")] = False,
    keep_existing: Annotated[
        bool,
        typer.Option(help="Exit 0 without a change when the folder already holds a complete bundle (one-shot jobs)."),
    ] = False,
    split: Annotated[
        bool,
        typer.Option(
            help="Also copy each holder's share into OUT_DIR/NAME/ (CA certificate, its certificate, key, token; "
            "tokens.yaml for the coordinator) and the CA certificate into OUT_DIR/public/, one folder per service."
        ),
    ] = False,
) -> None:
    """Create a development CA, a certificate and a token per role (coordinator, shard, worker, admin)."""
    from tidal.security.bundle import bundle_exists, create_bundle, split_bundle  # noqa: PLC0415

    holders = []
    for item in extra or []:
        role, sep, name = item.partition(":")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r}: expected ROLE:NAME", param_hint="--extra")
        holders.append((role, name))
    if keep_existing and force:
        raise typer.BadParameter("cannot be combined with --force", param_hint="--keep-existing")
    try:
        kept = keep_existing and bundle_exists(out_dir, holders)
        written = [] if kept else create_bundle(out_dir, holders, san or [], valid_days, force)
        if split:
            written += split_bundle(out_dir, holders)
    except (FileExistsError, ValueError, OSError, TidalError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    out_dir = out_dir.resolve()
    if kept:
        print(f"{out_dir} already holds a complete bundle: kept it")
    print(f"wrote {len(written)} files to {out_dir}; every process then needs:")
    if split:
        print(f"  TIDAL_TLS_DIR={out_dir}/NAME TIDAL_TLS_NAME=NAME, NAME being coordinator, shard, worker or admin")
        print("  (the coordinator also TIDAL_TOKENS_FILE=.../coordinator/tokens.yaml, for REST); public/ has ca.crt only")
        return
    print(f"  TIDAL_TLS_DIR={out_dir} TIDAL_TOKENS_FILE={out_dir / 'tokens.yaml'}")
    print("  TIDAL_TLS_NAME=<its certificate: coordinator|shard|worker|admin> (default: the command's role; admin")
    print(f"  for client commands) and TIDAL_TOKEN_FILE={out_dir}/<the same name>.token")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
