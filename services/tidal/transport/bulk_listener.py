"""The shard's side of the bulk channels (transport/bulk.py): one listening port per shard that
accepts connections, matches each one's token to the stream that offered it, and hands the
socket over. What a stranger can cost it is bounded: a connection must send its token within
HANDSHAKE_TIMEOUT_S, at most MAX_HANDSHAKES do so at once (more are closed at once), and a
token that no stream offered, or one already used, gets nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

from tidal.config import ENV
from tidal.core.errors import FailedPreconditionError
from tidal.transport.bulk import (
    ACCEPTED,
    HANDSHAKE_TIMEOUT_S,
    LISTENER_THREADS,
    MAX_HANDSHAKES,
    TOKEN_BYTES,
    tune_socket,
)
from tidal.transport.socket_io import recv_exactly
from tidal.transport.tls import SecurityConfig

log = logging.getLogger(__name__)


def server_context(security: SecurityConfig) -> ssl.SSLContext | None:
    """The shard's TLS for the bulk port: its gRPC certificate, and client certificates
    required where its gRPC server requires them; None in plaintext."""
    if security.cert_path is None or security.key_path is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(security.cert_path), str(security.key_path))
    if security.ca_path is not None:
        context.load_verify_locations(cafile=str(security.ca_path))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class BulkListener:
    """The shard's bulk port: accepts connections, matches each one's token to the stream that
    offered it (`expect`), and hands the socket over."""

    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext | None, handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    ) -> None:
        self._sock = sock
        self._context = context
        self._handshake_timeout_s = handshake_timeout_s
        # Streams' socket calls and handshakes run here, not on the loop's default executor.
        self.executor = ThreadPoolExecutor(LISTENER_THREADS, thread_name_prefix="bulk")
        self.port: int = sock.getsockname()[1]
        self._waiting: dict[bytes, asyncio.Future[socket.socket]] = {}
        self._handshakes = asyncio.Semaphore(MAX_HANDSHAKES)
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None
        # One socket carries both directions of a piecewise stream at once, from two threads,
        # which a TLS connection cannot do safely: such a stream needs a return connection.
        self.tls = context is not None

    @classmethod
    def open(
        cls, host: str, port: int, security: SecurityConfig, handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    ) -> BulkListener:
        """Binds `host:port` (0: any free port; read `port` back)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise FailedPreconditionError(
                f"--bulk-port / {ENV['bulk_port']}: cannot bind port {port} on {host} ({exc.strerror}; another "
                "tidal shard on this host?); choose another port, or 0 for any free one"
            ) from None
        return cls(sock, server_context(security), handshake_timeout_s)

    def start(self) -> None:
        self._accepting = asyncio.ensure_future(self._accept_forever())

    def expect(self, token: bytes | None = None) -> tuple[bytes, asyncio.Future[socket.socket]]:
        """A fresh token for one stream and the future its connection will complete."""
        token = token or secrets.token_bytes(TOKEN_BYTES)
        waiter: asyncio.Future[socket.socket] = asyncio.get_running_loop().create_future()
        self._waiting[token] = waiter
        return token, waiter

    def forget(self, token: bytes) -> None:
        waiter = self._waiting.pop(token, None)
        if waiter is not None and waiter.done() and not waiter.cancelled():
            waiter.result().close()  # connected, but the stream ended before it used it
        elif waiter is not None:
            waiter.cancel()

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:  # out of file descriptors, say: keep the port, try again shortly
                log.warning("bulk channel: accepting a connection failed (%s)", exc)
                await asyncio.sleep(0.5)
                continue
            if self._handshakes.locked():
                conn.close()  # too many silent connections already: this one waits for nothing
                continue
            task = asyncio.ensure_future(self._handshake(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        async with self._handshakes:
            loop = asyncio.get_running_loop()
            try:
                token, sock = await loop.run_in_executor(self.executor, self._read_token, conn)
            except (OSError, ConnectionError, ValueError) as exc:
                log.debug("bulk channel: dropped a connection (%s)", exc)
                conn.close()
                return
            waiter = self._waiting.get(token)
            if waiter is None or waiter.done():
                sock.close()
                return
            try:
                await loop.run_in_executor(self.executor, sock.sendall, ACCEPTED)
            except OSError:
                sock.close()
                return
            if waiter.done():  # the stream ended meanwhile
                sock.close()
                return
            sock.settimeout(None)
            waiter.set_result(sock)

    def _read_token(self, conn: socket.socket) -> tuple[bytes, socket.socket]:
        conn.setblocking(True)
        conn.settimeout(self._handshake_timeout_s)
        tune_socket(conn)
        sock = self._context.wrap_socket(conn, server_side=True) if self._context is not None else conn
        token = bytearray(TOKEN_BYTES)
        recv_exactly(sock, memoryview(token))
        return bytes(token), sock

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for task in list(self._tasks):
            task.cancel()
        for token in list(self._waiting):
            self.forget(token)
        self._sock.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
