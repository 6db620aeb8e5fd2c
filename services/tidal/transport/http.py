"""HTTP servers (REST, /metrics) on a service's own asyncio loop, bound like gRPC: port 0 works."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any

import uvicorn

from tidal.transport import tls
from tidal.transport.tls import SecurityConfig


class EmbeddedServer(uvicorn.Server):
    """uvicorn sharing the service's event loop; the service's own signal handlers stay in charge."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def bind_socket(host: str, port: int) -> socket.socket:
    """Binds a listening TCP socket ourselves so port 0 works and the real port can be read back."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()  # ours until returned: a failed bind leaks no descriptor
        raise
    return sock


def serve_asgi(
    app: Any, host: str, port: int, security: SecurityConfig | None = None
) -> tuple[EmbeddedServer, asyncio.Task[None], int]:
    """Starts an ASGI app on `host:port` on the running loop; returns the server, its task and port.
    HTTPS when `security` (default: the process's, transport/tls.py) has a certificate; a
    client certificate, when sent, must be signed by the configured CA."""
    security = security or tls.current()
    sock = bind_socket(host, port)
    options: dict[str, Any] = {}
    if security.tls:
        options = {"ssl_certfile": str(security.cert_path), "ssl_keyfile": str(security.key_path)}
        if security.ca_path is not None:
            options |= {"ssl_ca_certs": str(security.ca_path), "ssl_cert_reqs": ssl.CERT_OPTIONAL}
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, **options)
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    return server, task, sock.getsockname()[1]
