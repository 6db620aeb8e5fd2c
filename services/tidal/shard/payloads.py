"""How one Exchange stream's tensor payloads travel, on the shard's side: inline in the
messages, through shared memory the worker offered (transport/shm.py), or on a bulk channel
the worker asked for (transport/bulk.py). The session asks it where a push's payload lies and
where to put the parameters it serves; everything else about the stream is the same."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Protocol

from tidal.core.errors import DeadlineExceededError
from tidal.shard.runtime import PayloadTarget, ShardRuntime
from tidal.transport import bulk, frames, shm
from tidal.v1 import shard_pb2 as shard_pb


class BulkPort(Protocol):
    """What a session needs of the shard's bulk listener (transport/bulk.py)."""

    port: int
    executor: Executor | None
    # Its connections are TLS: they cannot carry both directions at once (not piecewise).
    tls: bool

    def expect(self) -> tuple[bytes, asyncio.Future]: ...

    def forget(self, token: bytes) -> None: ...


class StreamPayloads:
    """One stream's payload path, agreed at `open` and freed by `close`."""

    def __init__(self, runtime: ShardRuntime, accept_shared_memory: bool, bulk_port: BulkPort | None) -> None:
        self._runtime = runtime
        self._accept_shared_memory = accept_shared_memory
        self._bulk_port = bulk_port
        self._shared: shm.SharedStream | None = None
        self._token: bytes | None = None
        self._connecting: asyncio.Future | None = None
        self._bulk: bulk.BulkStream | None = None
        # Each message's payload follows it (set by the session where range replies were agreed).
        self.piecewise = False

    def agree(self, opened: shard_pb.ExchangeOpen) -> tuple[bool, shard_pb.BulkChannel | None]:
        """Maps the worker's shared memory if it offered some this process can see; else, if it
        asked for a bulk channel and this shard has a bulk port, offers one. Returns whether
        shared memory is in use and the bulk offer to answer with."""
        runtime = self._runtime
        params = runtime.state.params
        payload_bytes = params.numel() * params.element_size()
        if opened.HasField("shared_memory") and self._accept_shared_memory:
            self._shared = shm.SharedStream.accept(opened.shared_memory, payload_bytes, "open.shared_memory")
        offer = None
        if self._shared is None and opened.bulk and self._bulk_port is not None:
            self._token, self._connecting = self._bulk_port.expect()
            offer = shard_pb.BulkChannel(port=self._bulk_port.port, token=self._token)
        kind = "shared_memory" if self._shared else "bulk" if offer else "grpc"
        runtime.metrics.streams[kind].inc()
        return self._shared is not None, offer

    @property
    def can_flow_both_ways(self) -> bool:
        """Whether the agreed path can carry a push and its parameters at once (range
        replies): inline, or a bulk channel in plaintext; never shared memory."""
        if self._shared is not None:
            return False
        return self._token is None or (self._bulk_port is not None and not self._bulk_port.tls)

    async def _channel(self) -> bulk.BulkStream | None:
        """The bulk channel once the worker connected (waited for on first use)."""
        if self._bulk is None and self._connecting is not None:
            timeout_s = self._runtime.state.spec.step_timeout_s
            try:
                sock = await asyncio.wait_for(asyncio.shield(self._connecting), timeout_s)
            except TimeoutError:
                raise DeadlineExceededError(
                    f"bulk channel: the worker did not connect to port {self._bulk_port.port} within {timeout_s:.0f}s"
                ) from None
            params = self._runtime.state.params
            executor = self._bulk_port.executor if self._bulk_port else None
            self._bulk = bulk.BulkStream(sock, params.numel() * params.element_size(), timeout_s, executor)
            self._bulk.piecewise = self.piecewise
        return self._bulk

    async def inbound(self, chunks: Sequence[frames.ChunkView], block_read: bool, field: str) -> tuple[int, bool]:
        """Points the chunks that name `shared` regions at their bytes (reading the push's block
        off the bulk channel first, unless `block_read`); the payload bytes found and whether
        the push's block has been read."""
        in_block = any(chunk.shared is not None for chunk in chunks)
        channel = await self._channel() if in_block or block_read else None
        if channel is None:
            return shm.resolve(chunks, self._shared.push if self._shared else None, field), block_read
        return await channel.resolve(chunks, block_read, field)

    async def target(self) -> PayloadTarget | None:
        """Where `ShardRuntime.serve` writes the parameters it serves; None: inline."""
        if self._shared is not None:
            return self._shared.params
        channel = await self._channel()
        return channel.outbound if channel is not None else None

    async def served(self) -> None:
        """The messages of one parameters reply were sent: on a bulk channel, now its block
        (piecewise: each message's went after it, `sent_message`)."""
        if self._bulk is not None and not self.piecewise:
            await self._bulk.send_outbound(self._runtime.served_bytes())

    async def sent_message(self, elements: tuple[int, int]) -> None:
        """A parameters message was sent whose payload is those elements of the slice: on a
        piecewise bulk channel, now their bytes."""
        if self._bulk is not None and self.piecewise:
            size = self._runtime.served_itemsize()
            await self._bulk.send(self._bulk.outbound.payload((elements[1] - elements[0]) * size, elements[0] * size))

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        if self._bulk is not None:
            self._bulk.close()
            self._bulk = None
        if self._token is not None and self._bulk_port is not None:
            self._bulk_port.forget(self._token)
            self._token = None
