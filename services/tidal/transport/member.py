"""The life of a shard or worker process, the same for both roles.

Serve health and reflection (NOT_SERVING), warm up, register with the coordinator, go
SERVING, hold the session until SIGTERM/SIGINT (a broken session is reopened while the
member keeps working; only a coordinator unreachable for longer than the register timeout
ends the process), then go NOT_SERVING, release the job, say goodbye to the coordinator
(the member LEFT, it did not fail) and stop the server with a grace period. With
`exit_after_job`, the release of its first job ends the member too (exit code 0): batch
deployments (a Kubernetes Indexed Job) need members that finish.

The session and the /metrics server are supervised (transport/supervise.py): if either
crashes, or ends while the member still needs it, the traceback is logged and the member
shuts down the same way, with exit code 1.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry

from tidal.core import commands
from tidal.core.errors import TidalError
from tidal.core.training import warm_up
from tidal.transport.limits import SHUTDOWN_GRACE_S
from tidal.transport.metrics import PreferredPort, build_info, serve_metrics
from tidal.transport.process import stop_on_signals, write_ready_file
from tidal.transport.scrape_targets import publish_metrics, withdraw
from tidal.transport.server import add_health_and_reflection, set_health
from tidal.transport.session import MemberSession
from tidal.transport.supervise import Supervisor
from tidal.transport.tls import SecurityConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberPorts:
    host: str
    # The bound gRPC port.
    grpc_port: int
    # Port for /metrics; 0 picks a free one, a PreferredPort any free one when it is taken.
    metrics_port: int | PreferredPort


class MemberNode(Protocol):
    async def on_command(self, command: commands.Command) -> None: ...

    async def release(self) -> None: ...

    async def resume(self, resumed: bool) -> None:
        """The session was reopened: `resumed` says whether the member kept its id and job."""
        ...


async def serve_member(
    role: str,
    server: grpc.aio.Server,
    ports: MemberPorts,
    registry: CollectorRegistry,
    session: MemberSession,
    node: MemberNode,
    service_names: Sequence[str],
    ready_file: Path | None,
    register_timeout_s: float,
    exit_after_job: bool = False,
    *,
    security: SecurityConfig,
    scrape_target_dir: Path | None = None,
) -> int:
    """Runs a member whose servicers are already added to `server`; returns the exit code.
    The /metrics server and the coordinator session are supervised: a crash of either logs
    its traceback and ends the member with exit code 1 (transport/supervise.py)."""
    health = add_health_and_reflection(server, service_names)
    await set_health(health, service_names, serving=False)
    await server.start()
    build_info(registry, role)
    try:
        metrics, metrics_task, metrics_port = serve_metrics(
            registry, ports.host, ports.metrics_port, security, health=health
        )
        target = publish_metrics(scrape_target_dir, role, ports.host, ports.metrics_port, metrics_port)
    except BaseException:
        await server.stop(None)  # a port in use ends the process with one line, the gRPC server closed first
        raise
    stop = stop_on_signals()
    supervisor = Supervisor(stop)
    supervisor.watch("metrics server", metrics_task)
    code = 0
    registered = False
    try:
        await asyncio.to_thread(warm_up)
        # Start-up objects (torch, protobuf, pandas) never die: keep them out of the garbage
        # collector's full passes, which otherwise stall the first job for ~150 ms at a time.
        gc.collect()
        gc.freeze()
        member_id = await session.register(register_timeout_s)
        registered = True
        await set_health(health, service_names, serving=True)
        info = {"role": role, "grpc_port": ports.grpc_port, "metrics_port": metrics_port, "member_id": member_id}
        write_ready_file(ready_file, info)
        log.info("%s %s serving on %s:%d (metrics :%d)", role, member_id, ports.host, ports.grpc_port, metrics_port)

        async def on_command(command: commands.Command) -> None:
            await node.on_command(command)
            if exit_after_job and isinstance(command, commands.Release):
                log.info("job %s ended; %s exiting (--exit-after-job)", command.job_id, role)
                stop.set()

        # A broken session is retried as long as registering at start-up is; a coordinator
        # unreachable for longer ends it with an error, which stops the member.
        session.reconnect_timeout_s = register_timeout_s
        supervisor.spawn("coordinator session", session.run(on_command, node.resume))
        await stop.wait()
        if not supervisor.failed:
            # Stop working first, then say goodbye while the session is still open.
            await set_health(health, service_names, serving=False)
            await node.release()
            await session.leave("shutting down")
    except TidalError as exc:
        if not registered:
            raise  # refused or unreachable at start: one line from the command (cli_common.run_async)
        log.exception("%s", exc)
        code = 1
    finally:
        await set_health(health, service_names, serving=False)
        await node.release()
        await server.stop(SHUTDOWN_GRACE_S)
        metrics.should_exit = True
        withdraw(target)
        await supervisor.close()
        await session.close()
    # A crash while the tasks stopped counts too.
    return 1 if supervisor.failed else code
