"""The coordinator process: gRPC and REST on one event loop, plus the control loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

import uvicorn

from tidal.coordinator.control import Control
from tidal.coordinator.rest import create_app
from tidal.coordinator.servicer import CoordinatorServicer
from tidal.transport.limits import SHUTDOWN_GRACE_S
from tidal.transport.process import stop_on_signals, write_ready_file
from tidal.transport.server import add_health_and_reflection, create_server, set_health
from tidal.v1 import coordinator_pb2
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

log = logging.getLogger(__name__)
SERVICE_NAMES = [coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name]


class EmbeddedServer(uvicorn.Server):
    """uvicorn sharing our event loop: the process's own signal handlers stay in charge."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def bind_http(host: str, port: int) -> socket.socket:
    """Binds the REST socket ourselves so port 0 works and the real port can be reported."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def run_coordinator(
    host: str,
    port: int,
    http_port: int,
    heartbeat_interval_s: float,
    heartbeat_timeout_s: float,
    ready_file: Path | None,
) -> int:
    control = Control(heartbeat_interval_s, heartbeat_timeout_s)
    server, grpc_port = create_server(f"{host}:{port}")
    coord_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(control), server)
    health = add_health_and_reflection(server, SERVICE_NAMES)
    await set_health(health, SERVICE_NAMES, serving=False)
    http_sock = bind_http(host, http_port)
    rest = EmbeddedServer(uvicorn.Config(create_app(control), log_level="warning", lifespan="off"))
    await server.start()
    stop = stop_on_signals()
    tasks = [asyncio.create_task(control.run()), asyncio.create_task(rest.serve(sockets=[http_sock]))]
    try:
        await set_health(health, SERVICE_NAMES, serving=True)
        http_port = http_sock.getsockname()[1]
        write_ready_file(ready_file, {"role": "coordinator", "grpc_port": grpc_port, "http_port": http_port})
        log.info("coordinator serving gRPC on %s:%d, REST on http://%s:%d", host, grpc_port, host, http_port)
        await stop.wait()
        return 0
    finally:
        await set_health(health, SERVICE_NAMES, serving=False)
        rest.should_exit = True
        await server.stop(SHUTDOWN_GRACE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
