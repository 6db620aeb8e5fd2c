"""The client commands of `tidal`: submit, status, cancel, cluster and health talk to a running
coordinator (or, for health, to any tidal service). `register` adds them to the `tidal` app (cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.json_format import MessageToDict
from rich.table import Table

from tidal.cli_common import AllowPlaintext, Coordinator, build_security, err, run_async
from tidal.config import DEFAULT_COORDINATOR
from tidal.progress import stdout_console


def register(app: typer.Typer) -> None:
    """Adds the client commands to `app`, in the order `tidal --help` lists them."""
    for command in (submit, status, cancel, cluster, health):
        app.command()(command)


def submit(
    spec_file: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON.")],
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    wait: Annotated[bool, typer.Option(help="Wait for the job to end, with a progress bar.")] = False,
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """Submit a job; prints its id."""
    security = build_security("admin", allow_plaintext, server=False, command="submit")
    from tidal.client import TidalClient, load_spec_file  # noqa: PLC0415
    from tidal.progress import follow_job  # noqa: PLC0415
    from tidal.v1 import common_pb2 as common_pb  # noqa: PLC0415

    submitted: list[str] = []

    async def go() -> int:
        async with TidalClient(coordinator, security) as client:
            job = await client.submit(load_spec_file(spec_file))
            submitted.append(job.job_id)
            print(job.job_id, flush=True)
            if not wait:
                return 0
            final = await follow_job(client, job.job_id, err)
            return 0 if final.state == common_pb.JOB_STATE_SUCCEEDED else 1

    try:
        code = run_async(go())
    except KeyboardInterrupt:
        # Ctrl-C stops the waiting, not the job: say so, and how to stop it.
        if submitted:
            job_id = submitted[0]
            err.print(f"stopped waiting; job {job_id} keeps running (tidal cancel {job_id} stops it)", highlight=False)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def status(
    job_id: Annotated[str | None, typer.Argument(help="A job id; all jobs when omitted.")] = None,
    coordinator: Coordinator = DEFAULT_COORDINATOR,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """Show one job, or all jobs."""
    security = build_security("admin", allow_plaintext, server=False, command="status")
    from tidal.client import TidalClient, job_state_name  # noqa: PLC0415

    async def go() -> None:
        async with TidalClient(coordinator, security) as client:
            jobs = [await client.get(job_id)] if job_id else await client.list()
        if as_json:
            print(json.dumps([MessageToDict(j, preserving_proto_field_name=True) for j in jobs], indent=2))
            return
        table = Table("job", "state", "mode", "version", "samples", "train loss", "val metric", "message")
        for j in jobs:
            # e.g. "accuracy 0.912", "rmse 1.204": the metric of the job's objective, named.
            acc = f"{j.val_metric or 'accuracy'} {j.val_accuracy:.3f}" if j.HasField("val_accuracy") else "-"
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

    run_async(go())


def cancel(
    job_id: str, coordinator: Coordinator = DEFAULT_COORDINATOR, allow_plaintext: AllowPlaintext = False
) -> None:
    """Cancel a pending or running job."""
    security = build_security("admin", allow_plaintext, server=False, command="cancel")
    from tidal.client import TidalClient, job_state_name  # noqa: PLC0415

    async def go() -> None:
        async with TidalClient(coordinator, security) as client:
            print(job_state_name((await client.cancel(job_id)).state))

    run_async(go())


def cluster(coordinator: Coordinator = DEFAULT_COORDINATOR, allow_plaintext: AllowPlaintext = False) -> None:
    """List the members of the cluster."""
    security = build_security("admin", allow_plaintext, server=False, command="cluster")
    from tidal.client import TidalClient  # noqa: PLC0415

    async def go() -> None:
        async with TidalClient(coordinator, security) as client:
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

    run_async(go())


def _enum(msg: Any, field: str) -> str:
    value = MessageToDict(msg, preserving_proto_field_name=True).get(field, "")
    return str(value).split("_", 1 if field == "role" else 2)[-1].lower()


def health(
    address: Annotated[str, typer.Argument(help="host:port of any tidal service.")],
    service: Annotated[str, typer.Option(help="Service name to check ('' = the whole server).")] = "",
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds.")] = 3.0,
    allow_plaintext: AllowPlaintext = False,
) -> None:
    """grpc.health.v1 check: exit 0 when SERVING (usable as a container healthcheck). It uses the
    same TLS settings as the service it checks (TIDAL_TLS_*)."""
    from tidal.client import check_health  # noqa: PLC0415

    security = build_security("admin", allow_plaintext, server=False, command="health")
    result = run_async(check_health(address, security, service, timeout))
    print(result)
    raise typer.Exit(0 if result == "SERVING" else 1)
