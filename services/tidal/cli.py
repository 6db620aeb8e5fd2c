"""The `tidal` command: the typer app and the services (coordinator, shard, worker).

The runs on a local cluster (cli_local.py: demo, compare, advise), the client commands
(cli_client.py) and `certs` (cli_certs.py) are registered on the same app here, after the
services, in the order `tidal --help` lists them.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tidal import cli_certs, cli_client, cli_local
from tidal.cli_common import (
    AllowPlaintext,
    BulkChannel,
    BulkPort,
    Coordinator,
    ExitAfterJob,
    Host,
    LogLevel,
    MetricsPort,
    Name,
    Port,
    ReadyFile,
    RegisterTimeout,
    ScrapeTargetDir,
    SharedMemory,
    Threads,
    build_arena_limit,
    build_cluster_env,
    build_malloc_tuning,
    build_security,
    build_service_settings,
    run_async,
)
from tidal.climate.cli import climate_app
from tidal.config import (
    DEFAULT_CHECKPOINT_RETENTION_S,
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

if TYPE_CHECKING:
    from tidal.coordinator.one_job import OneJob
    from tidal.transport.metrics import PreferredPort
    from tidal.transport.settings import ServiceSettings
    from tidal.transport.tls import SecurityConfig

app = typer.Typer(
    help="tidal: distributed PyTorch training with a parameter server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(climate_app, name="climate")


def _process_setup(role: str, log_level: str) -> None:
    """Logging and malloc: what every service process sets up before it serves."""
    from prometheus_client import disable_created_metrics  # noqa: PLC0415

    from tidal.transport.process import setup_logging, tune_malloc  # noqa: PLC0415

    setup_logging(role, log_level)
    tune_malloc(build_malloc_tuning())
    # `_created` series double every counter's cardinality and no dashboard uses them.
    disable_created_metrics()


def _coordinator_setup(log_level: str, allow_plaintext: bool) -> SecurityConfig:
    # No torch here: the coordinator plans jobs from the layout its workers announce.
    security = build_security("coordinator", allow_plaintext, server=True)
    _process_setup("coordinator", log_level)
    return security


def _member_setup(
    role: str,
    log_level: str,
    threads: int,
    allow_plaintext: bool,
    shared_memory: str,
    device: str | None = None,
    bulk: tuple[str, int] = ("off", 0),
) -> ServiceSettings:
    import torch  # noqa: PLC0415  # the client commands and the coordinator run without torch

    settings = build_service_settings(role, allow_plaintext, shared_memory, device, *bulk)
    _process_setup(role, log_level)
    torch.set_num_threads(threads)
    return settings


def _metrics_port(given: int | None, default: int) -> int | PreferredPort:
    """--metrics-port as given, or the role's default, which yields to another service on the host."""
    from tidal.transport.metrics import PreferredPort  # noqa: PLC0415  # grpc only once a command runs

    return PreferredPort(default) if given is None else given


@app.command()
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
                _metrics_port(metrics_port, DEFAULT_COORDINATOR_METRICS_PORT),
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


@app.command()
def shard(
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    host: Host = "0.0.0.0",
    port: Port = DEFAULT_SHARD_PORT,
    metrics_port: MetricsPort = None,
    advertise_host: Annotated[
        str,
        typer.Option(
            envvar=ENV["advertise_host"], help="Host workers dial (default: --host, or 127.0.0.1 for 0.0.0.0)."
        ),
    ] = "",
    register_timeout: RegisterTimeout = 60.0,
    exit_after_job: ExitAfterJob = False,
    name: Name = "",
    index: Annotated[
        int | None,
        typer.Option(
            envvar=ENV["shard_index"],
            min=0,
            max=65535,
            help="Always take this shard index, so --checkpoint-dir holds that index's checkpoints; two live "
            "shards cannot ask for the same one (default: any index).",
        ),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            envvar=ENV["checkpoint_dir"],
            help="Write checkpoints here (schedule: the job spec's checkpoint block); restarted with the same "
            "folder, the shard restores its job from the newest valid one (default: no checkpoints).",
        ),
    ] = None,
    checkpoint_retention_s: Annotated[
        float,
        typer.Option(
            envvar=ENV["checkpoint_retention"],
            min=0.0,
            help="Delete a job's checkpoints this many seconds after its last one was written, i.e. after the "
            "job ended; checked at start and hourly (0: keep forever).",
        ),
    ] = DEFAULT_CHECKPOINT_RETENTION_S,
    checkpoint_fault: Annotated[
        str, typer.Option(envvar=ENV["checkpoint_fault"], hidden=True, help="Tests only: crash inside a write.")
    ] = "",
    max_embedding_bytes: Annotated[
        int,
        typer.Option(
            envvar=ENV["max_embedding_bytes"],
            min=0,
            help="Most bytes of embedding rows (values, optimizer state, bookkeeping) this shard holds for a job, "
            "over all its tables; a job whose share of its tables may need more is refused (0: no bound).",
        ),
    ] = 0,
    shared_memory: SharedMemory = "auto",
    bulk_channel: BulkChannel = "on",
    bulk_port: BulkPort = 0,
    ready_file: ReadyFile = None,
    scrape_target_dir: ScrapeTargetDir = None,
    log_level: LogLevel = "INFO",
    torch_threads: Threads = 1,
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """Run a parameter shard."""
    from tidal.shard.main import run_shard  # noqa: PLC0415

    bulk = (bulk_channel, bulk_port)
    settings = _member_setup("shard", log_level, torch_threads, allow_plaintext, shared_memory, bulk=bulk)
    advertise = advertise_host or (host if host not in ("0.0.0.0", "::") else "127.0.0.1")
    raise typer.Exit(
        run_async(
            run_shard(
                coordinator,
                host,
                port,
                _metrics_port(metrics_port, DEFAULT_SHARD_METRICS_PORT),
                advertise,
                ready_file,
                register_timeout,
                exit_after_job,
                checkpoint_dir,
                checkpoint_fault,
                checkpoint_retention_s=checkpoint_retention_s,
                name=name,
                shard_index=index,
                settings=settings,
                scrape_target_dir=scrape_target_dir,
                limit_arenas=build_arena_limit(),
                max_embedding_bytes=max_embedding_bytes,
            )
        )
    )


@app.command()
def worker(
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    host: Host = "0.0.0.0",
    port: Port = DEFAULT_WORKER_PORT,
    metrics_port: MetricsPort = None,
    slowdown: Annotated[
        float, typer.Option(envvar=ENV["slowdown"], min=1.0, help="Simulate a machine this many times slower.")
    ] = 1.0,
    register_timeout: RegisterTimeout = 60.0,
    exit_after_job: ExitAfterJob = False,
    name: Name = "",
    shared_memory: SharedMemory = "auto",
    bulk_channel: BulkChannel = "off",
    ready_file: ReadyFile = None,
    scrape_target_dir: ScrapeTargetDir = None,
    log_level: LogLevel = "INFO",
    torch_threads: Threads = 1,
    allow_plaintext: AllowPlaintext = False,
    device: Annotated[
        str | None,
        typer.Option(
            envvar=ENV["device"],
            help="Compute on auto, cpu, cuda or cuda:N, whatever the job spec's device says (default: the spec's).",
        ),
    ] = None,
) -> None:
    """Run a worker."""
    from tidal.worker.main import run_worker  # noqa: PLC0415

    bulk = (bulk_channel, 0)
    settings = _member_setup("worker", log_level, torch_threads, allow_plaintext, shared_memory, device, bulk)
    raise typer.Exit(
        run_async(
            run_worker(
                coordinator,
                host,
                port,
                _metrics_port(metrics_port, DEFAULT_WORKER_METRICS_PORT),
                slowdown,
                ready_file,
                register_timeout,
                exit_after_job,
                name=name,
                settings=settings,
                scrape_target_dir=scrape_target_dir,
            )
        )
    )


cli_local.register(app)
cli_client.register(app)
cli_certs.register(app)


def _plain_labels(command: Any) -> None:
    """Help without typer's type labels: no `<bool>` beside a flag, and an argument shown as
    SPEC_FILE, not `{spec_file}`. (Typer's parameter classes are its own: duck-typed here.)"""
    for param in command.params:
        if param.param_type_name == "option" and getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.param_type_name == "argument" and param.metavar is None:
            param.metavar = label = (param.name or "").upper()
            if param.required:  # typer writes {NAME} for a required argument; click's own style is NAME
                param._usage_display_name = lambda label=label: label
    own_help = command.get_help_option

    def help_option(ctx: Any) -> Any:  # --help is made per context, not one of the params
        option = own_help(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _plain_labels(sub)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    command = typer.main.get_command(app)
    _plain_labels(command)
    try:
        command()
    except KeyboardInterrupt:
        sys.exit(130)
