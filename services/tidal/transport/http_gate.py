"""The request gate: credentials from the headers first, then the body, never more than a limit.

A pure ASGI middleware in front of a FastAPI app. FastAPI reads and parses a body before any
dependency runs, so a guard written as a dependency lets anyone without a token make the
server buffer and parse whatever they send. The gate instead:

1. finds the route the router will pick; for a guarded one (every API route; the docs, the
   schema and the Swagger UI assets are public) it decides from the `authorization` header
   alone (http_auth.rest_principal) and answers 401 / 403 without reading the body;
2. answers 413 when `content-length` announces more than `max_body_bytes`;
3. reads the body as it streams in, answering 413 as soon as it passes the limit (at most
   the limit plus one chunk is ever held), and hands the app the body in one message.

Every refusal is the JSON error shape of transport/http_errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidal.core.errors import InvalidArgumentError, PermissionDeniedError, UnauthenticatedError
from tidal.transport.http_auth import rest_principal
from tidal.transport.http_errors import headers_for, http_error_for, send_error
from tidal.transport.tls import SecurityConfig

MAX_BODY_BYTES = 1024 * 1024
# After refusing a request, how long and how much of the rest of its body is read and dropped
# before the connection may close.
LINGER_S = 5.0
LINGER_BYTES = 64 * 1024 * 1024


def checked_body_limit(max_body_bytes: int) -> int:
    """`max_body_bytes` if usable (apps call it when built: the gate itself is built at the first request)."""
    if max_body_bytes < 1:
        raise InvalidArgumentError(f"max_body_bytes: must be at least 1, got {max_body_bytes}")
    return max_body_bytes


class RequestGate:
    """ASGI middleware; `routes` is the app's route list, read on every request (routes added later count)."""

    def __init__(
        self,
        app: ASGIApp,
        routes: list[BaseRoute],
        security: SecurityConfig,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.routes = routes
        self.security = security
        self.max_body_bytes = checked_body_limit(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if (template := self._guarded_template(scope)) is not None:
            try:
                rest_principal(self.security, scope["method"], template, headers.get("authorization"))
            except (UnauthenticatedError, PermissionDeniedError) as exc:
                status, code = http_error_for(exc)
                await send_error(send, status, code, str(exc), headers_for(status).items())
                await _discard_the_rest(receive)
                return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)
            await _discard_the_rest(receive)
            return
        first = await self._read_body(receive)
        if first is None:
            await self._too_large(send)
            await _discard_the_rest(receive)
            return
        await self.app(scope, _replay(first, receive), send)

    def _guarded_template(self, scope: Scope) -> str | None:
        """The path template of the route that will serve `scope`, when that route is guarded.
        Mirrors the router: the first full match wins; a partial one (wrong method) is a 405."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path if isinstance(route, APIRoute) else None
        return None

    async def _read_body(self, receive: Receive) -> Message | None:
        """The whole body as one `http.request` message (or the disconnect that cut it short);
        None once it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    async def _too_large(self, send: Send) -> None:
        message = f"body: larger than this server's limit of {self.max_body_bytes} bytes"
        await send_error(send, 413, "RESOURCE_EXHAUSTED", message)


async def _discard_the_rest(receive: Receive) -> None:
    """Reads and drops what is left of a refused request's body, for a while. Closing a
    connection with unread data in it makes the kernel reset it, and the client then loses the
    answer it was sent (a lingering close, as web servers do); nothing read is kept."""
    dropped = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_S):
            while dropped <= LINGER_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                dropped += len(message.get("body", b""))


def _replay(first: Message, receive: Receive) -> Receive:
    """The body read by the gate, then the connection's own messages (a disconnect)."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
