"""A bulk channel beside an Exchange stream: the tensor payloads on a socket of their own.

Between hosts, inline gRPC costs more than the wire: in Python every payload byte passes
through gRPC's buffers, HTTP/2 framing and Python `bytes` on both sides (bench/NOTES.md,
"What stands in the way"). A worker that asks for it (ExchangeOpen.bulk) gets a port and a
token from the shard (ExchangeOpened.bulk), connects, sends the token and reads one byte back.
From then on the stream's messages carry only chunk headers whose `shared` regions point into
a block, and each push or parameters reply sends its payload on the socket as that block: an
8-byte little-endian length, then the bytes, written after the message that refers to it. The
receiver reads the block into a buffer laid out like a shared-memory segment (transport/shm.py)
straight from the socket (`recv_into`), so the checks and the assembly are those of shared
memory. The stream still orders everything: a block is read when the first message of its push
or reply arrives, and the two directions take turns (push, then parameters). A stream that
agreed to range replies (a plain sync job's) is piecewise instead: each message's payload
follows it as a block of its own, appended to its push's or reply's blocks before, and both
directions flow at once, so a step's first parameters come down while the rest of its gradient
still goes up (core/range_barrier.py). A plain socket carries both directions from two threads;
one TLS connection must not (OpenSSL's rule), so a piecewise TLS channel is two connections,
the worker's blocks on the first and the shard's on a second that the worker opens with the
offer's `return_token`. A worker's push
returns once its peer acknowledged the block (`send(..., drained=True)`), not once the block sits
in the send buffer, so its links' one-at-a-time uploads really take turns on the link.

Blocking socket calls run in threads, which release the GIL while the kernel or OpenSSL copies;
the socket is TLS (mutual where the gRPC servers are) whenever the process has certificates.
What one peer can cost the other is bounded: a block longer than the receiver's buffer is
refused before a byte of it is read, every call on the socket times out, and a listener
handshake that does not send its token in time is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import torch

from tidal.config import ENV
from tidal.core.errors import DeadlineExceededError, InvalidArgumentError, UnavailableError
from tidal.transport import frames, shm
from tidal.transport.shm import HEADER_BYTES
from tidal.transport.socket_io import recv_exactly, wait_drained
from tidal.transport.tls import SecurityConfig
from tidal.v1 import shard_pb2 as shard_pb

TOKEN_BYTES = 16
_LENGTH = struct.Struct("<Q")
ACCEPTED = b"\x01"
# A connection must send its token within this long, and at most this many may be doing so at
# once: a peer that connects and says nothing holds a thread for no longer than that.
HANDSHAKE_TIMEOUT_S = 10.0
MAX_HANDSHAKES = 16
# Socket buffers: a shaped 10 Gbit/s link needs several megabytes in flight to stay full.
SOCKET_BUFFER_BYTES = 8 << 20
# The shard's threads for blocking socket calls: each stream uses one at a time.
LISTENER_THREADS = 64
# A worker's upload is done once the peer's kernel acknowledged all but this many bytes, not
# when its last byte is queued in the (megabytes of) send buffer: its links upload one shard's
# slice at a time so that the first shard sends its parameters down while the next slice goes
# up, and an upload that still drains its buffer would share the link with the next one.
DRAINED_BYTES = 256 << 10


_SETTINGS = {"on": True, "1": True, "off": False, "0": False}


def parse_setting(value: str, source: str = ENV["bulk_channel"]) -> bool:
    """Whether a worker asks for (a shard offers) bulk channels, from `--bulk-channel` or
    TIDAL_BULK_CHANNEL (named by `source`): "on" or "off"."""
    try:
        return _SETTINGS[value.strip().lower()]
    except KeyError:
        raise InvalidArgumentError(f"{source}: expected on or off, got {value.strip()!r}") from None


class Block:
    """Where one direction's payloads land: a header's worth of room, then the block last
    received (regions are counted from the start, as in a shared-memory segment)."""

    def __init__(self, payload_bytes: int) -> None:
        self.capacity = payload_bytes
        self._buffer = torch.empty(HEADER_BYTES + payload_bytes, dtype=torch.uint8)
        self._view = memoryview(self._buffer.numpy())
        # Bytes that hold the current block: region() refuses anything past them.
        self.size = HEADER_BYTES

    def tensor(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """The first `numel` payload elements as a tensor over the buffer (what a sender fills)."""
        return self._buffer[HEADER_BYTES : HEADER_BYTES + numel * dtype.itemsize].view(dtype)

    def payload(self, length: int, start: int = 0) -> memoryview:
        """Payload bytes [start, start + length)."""
        return self._view[HEADER_BYTES + start : HEADER_BYTES + start + length]

    def filled(self, length: int) -> None:
        self.size = HEADER_BYTES + length

    def region(self, offset: int, length: int, where: str) -> memoryview:
        """Bytes [offset, offset + length) of the current block, checked."""
        if length <= 0 or offset < HEADER_BYTES or offset + length > self.size:
            raise InvalidArgumentError(
                f"{where}.shared: bytes [{offset}, {offset + length}) are not inside the block "
                f"[{HEADER_BYTES}, {self.size}) this stream's bulk channel carried"
            )
        return self._view[offset : offset + length]


class BulkStream:
    """One Exchange stream's bulk channel: blocks out, blocks into `inbound`. `outbound` is a
    buffer the side that must snapshot what it sends (the shard's parameters) copies into.

    `piecewise`: each message's payload follows it as a block of its own, appended to the ones
    before in its push or reply (agreed with range replies: the parameters of the first ranges
    come down while the rest of the gradient still goes up); else one block per push or reply.
    Blocks come in on `receiving` and go out on `sending`: the same socket, except on a
    piecewise TLS channel (two connections, one per direction)."""

    def __init__(
        self,
        receiving: socket.socket,
        payload_bytes: int,
        timeout_s: float,
        executor: Executor | None = None,
        *,
        sending: socket.socket | None = None,
        piecewise: bool = False,
    ) -> None:
        self._receiving = receiving
        self._sending = sending if sending is not None else receiving
        for sock in self._sockets():
            sock.settimeout(timeout_s)
        self._timeout_s = timeout_s
        self._executor = executor
        self.inbound = Block(payload_bytes)
        self._outbound: Block | None = None
        self._payload_bytes = payload_bytes
        self.piecewise = piecewise
        self.closed = False

    def _sockets(self) -> list[socket.socket]:
        return [self._receiving] if self._sending is self._receiving else [self._receiving, self._sending]

    @property
    def outbound(self) -> Block:
        if self._outbound is None:  # only the shard sends from a copy: allocated on first use
            self._outbound = Block(self._payload_bytes)
        return self._outbound

    async def _call(self, fn: object, *args: object) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)  # type: ignore[arg-type]
        except TimeoutError:
            raise DeadlineExceededError("bulk channel: the peer did not keep up within the step timeout") from None
        except (OSError, ConnectionError) as exc:
            raise UnavailableError(f"bulk channel: {exc}") from None

    async def send(self, payload: memoryview | torch.Tensor, drained: bool = False) -> int:
        """Sends one block: the bytes of `payload` (a contiguous tensor, or bytes) after their
        length; `drained`: returns once the peer acknowledged nearly all of it (DRAINED_BYTES)."""
        if isinstance(payload, torch.Tensor):
            payload = memoryview(payload.contiguous().view(torch.uint8).numpy())
        await self._call(self._send_block, payload, drained)  # one thread hop per block
        return _LENGTH.size + len(payload)

    def _send_block(self, payload: memoryview, drained: bool) -> None:
        self._sending.sendall(_LENGTH.pack(len(payload)))
        self._sending.sendall(payload)
        if drained:
            wait_drained(self._sending, DRAINED_BYTES, self._timeout_s)

    async def send_outbound(self, length: int) -> int:
        """Sends the first `length` bytes of `outbound` as one block."""
        return await self.send(self.outbound.payload(length))

    async def receive(self, field: str, append: bool = False) -> int:
        """Reads one block into `inbound` (`append`: after the blocks of the same push or reply
        read before); its length, refused unless it fits."""
        start = self.inbound.size - HEADER_BYTES if append else 0
        length = await self._call(self._receive_block, start, field)  # one thread hop per block
        self.inbound.filled(start + length)
        return _LENGTH.size + length

    def _receive_block(self, start: int, field: str) -> int:
        header = bytearray(_LENGTH.size)
        recv_exactly(self._receiving, memoryview(header))
        (length,) = _LENGTH.unpack(header)
        if start + length > self.inbound.capacity:
            after = f" after {start} of the same push or reply" if start else ""
            raise InvalidArgumentError(
                f"{field}: a bulk block of {length} bytes{after}, more than the {self.inbound.capacity} "
                "this slice can hold"
            )
        recv_exactly(self._receiving, self.inbound.payload(length, start))
        return length

    async def resolve(self, chunks: Sequence[frames.ChunkView], block_read: bool, field: str) -> tuple[int, bool]:
        """Points the chunks' `shared` regions into this stream's block, reading off the socket
        first what the message's payload came in: the push's or reply's one block at its first
        message that names one (not `block_read`), or, `piecewise`, this message's own block.
        Returns the payload bytes found (as `shm.resolve`) and whether a block of the push or
        reply has been read."""
        if (self.piecewise or not block_read) and any(chunk.shared is not None for chunk in chunks):
            await self.receive(field, append=self.piecewise and block_read)
            block_read = True
        return shm.resolve(chunks, self.inbound, field), block_read  # type: ignore[arg-type]

    def close(self) -> None:
        """Ends the sockets; a thread blocked on one returns at once."""
        if self.closed:
            return
        self.closed = True
        for sock in self._sockets():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def tune_socket(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


def client_context(security: SecurityConfig) -> ssl.SSLContext | None:
    """The worker's TLS to a bulk port: the CA it trusts the shards by, its own certificate for
    mutual TLS; None where it dials the shards' gRPC in plaintext."""
    if security.ca_path is None and not security.tls:
        return None
    context = ssl.create_default_context(cafile=str(security.ca_path) if security.ca_path else None)
    if security.cert_path is not None and security.key_path is not None:
        context.load_cert_chain(str(security.cert_path), str(security.key_path))
    return context


def _dial(host: str, port: int, token: bytes, context: ssl.SSLContext | None, server_name: str, timeout_s: float):
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        tune_socket(sock)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=server_name or host)
        sock.sendall(token)
        answer = bytearray(1)
        recv_exactly(sock, memoryview(answer))
        if bytes(answer) != ACCEPTED:
            raise ConnectionError("the shard did not accept the bulk channel's token")
        return sock
    except BaseException:
        sock.close()
        raise


async def connect(
    host: str,
    offer: shard_pb.BulkChannel,
    security: SecurityConfig,
    payload_bytes: int,
    timeout_s: float,
    piecewise: bool = False,
    connect_timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> BulkStream:
    """The worker's side: connects to the shard's bulk port and presents the token (and, on a
    piecewise TLS channel, opens the return connection the shard's blocks come on); raises
    UnavailableError if that fails (a firewall between the hosts, say)."""
    if len(offer.token) != TOKEN_BYTES or not 0 < offer.port < 65536:
        raise UnavailableError(f"bulk channel: the shard's offer is malformed (port {offer.port})")
    if offer.return_token and len(offer.return_token) != TOKEN_BYTES:
        raise UnavailableError("bulk channel: the shard's offer has a malformed return_token")
    context = client_context(security)
    if piecewise and context is not None and not offer.return_token:
        raise UnavailableError("bulk channel: the shard agreed to range replies on one TLS connection")
    tokens = [offer.token, offer.return_token] if offer.return_token else [offer.token]
    # Every dial runs to its end (a thread cannot be cancelled): if one fails, the sockets the
    # others opened are closed here rather than left to the garbage collector.
    socks = await asyncio.gather(
        *(
            asyncio.to_thread(_dial, host, offer.port, token, context, security.server_name, connect_timeout_s)
            for token in tokens
        ),
        return_exceptions=True,
    )
    failed = [s for s in socks if isinstance(s, BaseException)]
    if failed:
        for sock in socks:
            if isinstance(sock, socket.socket):
                sock.close()
        if not isinstance(failed[0], (OSError, ConnectionError)):
            raise failed[0]
        raise UnavailableError(f"bulk channel to {host}:{offer.port}: {failed[0]}") from None
    sending, receiving = socks[0], socks[-1]
    return BulkStream(receiving, payload_bytes, timeout_s, sending=sending, piecewise=piecewise)
