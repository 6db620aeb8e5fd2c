"""`tidal shard` and `tidal worker`: the members' options and their start. `register` adds them to
the `tidal` app (cli.py), in the order `tidal --help` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

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
    build_service_settings,
    metrics_port_or_default,
    process_setup,
    run_async,
)
from tidal.config import (
    DEFAULT_CHECKPOINT_RETENTION_S,
    DEFAULT_COORDINATOR,
    DEFAULT_SHARD_METRICS_PORT,
    DEFAULT_SHARD_PORT,
    DEFAULT_WORKER_METRICS_PORT,
    DEFAULT_WORKER_PORT,
    ENV,
)

if TYPE_CHECKING:
    from tidal.transport.settings import ServiceSettings


def register(app: typer.Typer) -> None:
    """Adds the member commands to `app`, in the order `tidal --help` lists them."""
    for command in (shard, worker):
        app.command()(command)


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
    process_setup(role, log_level)
    torch.set_num_threads(threads)
    return settings


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
                metrics_port_or_default(metrics_port, DEFAULT_SHARD_METRICS_PORT),
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
                metrics_port_or_default(metrics_port, DEFAULT_WORKER_METRICS_PORT),
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
