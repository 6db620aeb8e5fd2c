"""The life of a shard or worker process, the same for both roles.

Serve health and reflection (NOT_SERVING), warm up, register with the coordinator, go
SERVING, hold the session until SIGTERM/SIGINT or until the session breaks, then go
NOT_SERVING, release the job and stop the server with a grace period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import grpc

from tidal.core.errors import TidalError
from tidal.core.training import warm_up
from tidal.transport.limits import SHUTDOWN_GRACE_S
from tidal.transport.process import stop_on_signals, write_ready_file
from tidal.transport.server import add_health_and_reflection, set_health
from tidal.transport.session import MemberSession
from tidal.v1 import coordinator_pb2 as coord_pb

log = logging.getLogger(__name__)


class MemberNode(Protocol):
    async def on_command(self, msg: coord_pb.SessionResponse) -> None: ...

    async def release(self) -> None: ...


async def serve_member(
    role: str,
    server: grpc.aio.Server,
    host: str,
    port: int,
    session: MemberSession,
    node: MemberNode,
    service_names: Sequence[str],
    ready_file: Path | None,
    register_timeout_s: float,
) -> int:
    """Runs a member whose servicers are already added to `server`; returns the exit code."""
    health = add_health_and_reflection(server, service_names)
    await set_health(health, service_names, serving=False)
    await server.start()
    stop = stop_on_signals()
    try:
        await asyncio.to_thread(warm_up)
        member_id = await session.register(register_timeout_s)
        await set_health(health, service_names, serving=True)
        write_ready_file(ready_file, {"role": role, "grpc_port": port, "member_id": member_id})
        log.info("%s %s serving on %s:%d", role, member_id, host, port)
        session_task = asyncio.create_task(session.run(node.on_command))
        stop_task = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({session_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        session_task.cancel()
        if session_task in done:
            session_task.result()  # raises why the session ended
        return 0
    except TidalError as exc:
        log.error("%s", exc)
        return 1
    finally:
        await set_health(health, service_names, serving=False)
        await node.release()
        await server.stop(SHUTDOWN_GRACE_S)
        await session.close()
