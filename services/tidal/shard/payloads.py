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
    """What a session needs of the shard's bulk listener (transport/bulk_listener.py)."""

    port: int
    executor: Executor | None
    # Its connections are TLS: one cannot carry both directions at once (a piecewise stream
    # needs a return connection).
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
        # The bulk channel's connections: the worker's blocks, and on a piecewise TLS channel
        # the return connection the shard's go on (their tokens, and the sockets once connected).
        self._tokens: list[bytes] = []
        self._connecting: list[asyncio.Future] = []
        self._bulk: bulk.BulkStream | None = None
        # Range replies agreed on a bulk channel: each message's payload follows it (`agree`).
        self._piecewise = False

    @property
    def piecewise(self) -> bool:
        return self._piecewise

    def agree(self, opened: shard_pb.ExchangeOpen, ranged: bool) -> tuple[bool, shard_pb.BulkChannel | None, bool]:
        """Maps the worker's shared memory if it offered some this process can see; else, if it
        asked for a bulk channel and this shard has a bulk port, offers one. `ranged`: the
        worker asked for range replies and the job can take pushes range by range. Returns
        whether shared memory is in use, the bulk offer to answer with, and whether range
        replies are agreed (any path that carries both directions at once: inline, or a bulk
        channel, on TLS only where the worker opens a return connection; never shared memory)."""
        runtime = self._runtime
        params = runtime.state.params
        payload_bytes = params.numel() * params.element_size()
        if opened.HasField("shared_memory") and self._accept_shared_memory:
            self._shared = shm.SharedStream.accept(opened.shared_memory, payload_bytes, "open.shared_memory")
        offer = None
        range_replies = ranged and self._shared is None
        if self._shared is None and opened.bulk and (port := self._bulk_port) is not None:
            offer = shard_pb.BulkChannel(port=port.port, token=self._expect(port))
            if range_replies and port.tls:
                range_replies = opened.bulk_return_connection
                if range_replies:
                    offer.return_token = self._expect(port)
        self._piecewise = range_replies and offer is not None
        kind = "shared_memory" if self._shared else "bulk" if offer else "grpc"
        runtime.metrics.streams[kind].inc()
        return self._shared is not None, offer, range_replies

    def _expect(self, port: BulkPort) -> bytes:
        token, connecting = port.expect()
        self._tokens.append(token)
        self._connecting.append(connecting)
        return token

    async def _channel(self) -> bulk.BulkStream | None:
        """The bulk channel once the worker connected (waited for on first use)."""
        if self._bulk is None and self._connecting:
            timeout_s = self._runtime.state.spec.step_timeout_s
            try:
                socks = await asyncio.wait_for(asyncio.shield(asyncio.gather(*self._connecting)), timeout_s)
            except TimeoutError:
                raise DeadlineExceededError(
                    f"bulk channel: the worker did not connect to port {self._bulk_port.port} within {timeout_s:.0f}s"
                ) from None
            params = self._runtime.state.params
            executor = self._bulk_port.executor if self._bulk_port else None
            receiving, sending = socks[0], socks[-1]  # one socket, or the worker's and the return connection
            self._bulk = bulk.BulkStream(
                receiving,
                params.numel() * params.element_size(),
                timeout_s,
                executor,
                sending=sending,
                piecewise=self._piecewise,
            )
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
        if self._bulk is not None and not self._piecewise:
            await self._bulk.send_outbound(self._runtime.served_bytes())

    async def sent_message(self, elements: tuple[int, int]) -> None:
        """A parameters message was sent whose payload is those elements of the slice: on a
        piecewise bulk channel, now their bytes."""
        if self._bulk is not None and self._piecewise:
            size = self._runtime.served_itemsize()
            await self._bulk.send(self._bulk.outbound.payload((elements[1] - elements[0]) * size, elements[0] * size))

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        if self._bulk is not None:
            self._bulk.close()
            self._bulk = None
        if self._bulk_port is not None:
            for token in self._tokens:
                self._bulk_port.forget(token)
        self._tokens, self._connecting = [], []
