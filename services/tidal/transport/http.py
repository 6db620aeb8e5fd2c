"""HTTP servers (REST, /metrics) on a service's own asyncio loop, bound like gRPC: port 0 works.

uvicorn answers requests it cannot parse (bad syntax, headers over h11's limit) itself, before
any app runs, in plain text; `JsonErrorH11Protocol` gives those answers the JSON error shape of
transport/http_errors.py. h11 measures the headers only while a request is still incomplete, so
one that arrives whole in a single read passes it at any size: `HeaderLimit` checks the parsed
request against the same `max_header_bytes`, and either way the answer is the same JSON 431.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import sys
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from tidal.transport.http_errors import code_for_status, error_bytes, send_error
from tidal.transport.tls import SecurityConfig

# Most bytes of a request line plus headers (h11's own default, set here so it is one named limit).
MAX_HEADER_BYTES = 16 * 1024


class EmbeddedServer(uvicorn.Server):
    """uvicorn sharing the service's event loop; the service's own signal handlers stay in charge."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _headers_too_large(max_header_bytes: int) -> str:
    return f"headers: the request line and headers exceed {max_header_bytes} bytes"


class HeaderLimit:
    """ASGI wrapper: a request line plus headers over `max_header_bytes` gets a JSON 431."""

    def __init__(self, app: ASGIApp, max_header_bytes: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            line = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope["query_string"]) + 12
            size = line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_header_bytes:
                await send_error(send, 431, code_for_status(431), _headers_too_large(self.max_header_bytes))
                return
        await self.app(scope, receive, send)


# After refusing an unparsable request, how long what the client still sends is read and
# dropped before the connection closes: closing with unread data makes the kernel reset the
# connection, and the client then loses the answer (a lingering close, as web servers do).
LINGER_S = 2.0


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol whose own refusals of unparsable requests are JSON errors,
    closed only after a lingering read."""

    _lingering = False

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a refused request: dropped
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this inside its `except h11.RemoteProtocolError`, so the error is the
        # one being handled; h11 hints 431 when the headers outgrew max_incomplete_event_size.
        exc = sys.exception()
        status = exc.error_status_hint if isinstance(exc, h11.RemoteProtocolError) else 400
        if status == 431:
            message = _headers_too_large(self.config.h11_max_incomplete_event_size)
        else:
            message = f"request: not valid HTTP/1.1 ({exc})" if exc is not None else f"request: {msg}"
        body = error_bytes(code_for_status(status), message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        reason = STATUS_PHRASES.get(status, b"")
        for event in (h11.Response(status_code=status, headers=headers, reason=reason), h11.Data(data=body)):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)


def bind_socket(host: str, port: int) -> socket.socket:
    """Binds a listening TCP socket ourselves so port 0 works and the real port can be read back."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it a response written in two parts (headers, body) waits for the client's
    # delayed ACK, 40 ms on every request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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
    app: Any,
    host: str,
    port: int,
    security: SecurityConfig,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> tuple[EmbeddedServer, asyncio.Task[None], int]:
    """Starts an ASGI app on `host:port` on the running loop; returns the server, its task and port.
    HTTPS when `security` (transport/tls.py) has a certificate; a client certificate, when
    sent, must be signed by the configured CA. A request line plus headers over
    `max_header_bytes` is refused with 431."""
    sock = bind_socket(host, port)
    options: dict[str, Any] = {}
    if security.tls:
        options = {"ssl_certfile": str(security.cert_path), "ssl_keyfile": str(security.key_path)}
        if security.ca_path is not None:
            options |= {"ssl_ca_certs": str(security.ca_path), "ssl_cert_reqs": ssl.CERT_OPTIONAL}
    config = uvicorn.Config(
        HeaderLimit(app, max_header_bytes),
        http=JsonErrorH11Protocol,
        h11_max_incomplete_event_size=max_header_bytes,
        log_level="warning",
        lifespan="off",
        access_log=False,
        **options,
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    return server, task, sock.getsockname()[1]
