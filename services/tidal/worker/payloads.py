"""How one Exchange stream's tensor payloads travel, on the worker's side: inline in the
messages, through shared memory offered to the shard (transport/shm.py), or on a bulk channel
asked of it (transport/bulk.py). The link (worker/links.py) asks it what to offer at `open`,
how to send a push's payload and where a reply's payload lies; everything else about the
stream is the same. The shard's counterpart is shard/payloads.py."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tidal.core.errors import UnavailableError
from tidal.core.shard_map import Segment
from tidal.transport import bulk, frames, serde, shm
from tidal.transport.limits import PIECE_BYTES
from tidal.transport.tls import SecurityConfig
from tidal.v1 import shard_pb2 as shard_pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _PushLayout:
    """How a carried push's messages refer to its payload: each message's chunk headers and,
    piecewise, the elements of the slice whose bytes follow that message."""

    groups: list[list[frames.Encoded]]
    elements: list[tuple[int, int]]
    payload_bytes: int

    @classmethod
    def of(cls, dtype: torch.dtype, segments: Sequence[Segment], start: int, piecewise: bool) -> _PushLayout:
        size = sum(seg.length for seg in segments) * dtype.itemsize
        if not piecewise:  # one chunk per tensor: the fewest headers
            return cls(serde.shared_chunks(dtype, segments, start), [], size)
        windows = serde.window_groups(dtype.itemsize, segments, start, PIECE_BYTES)
        groups = [serde.placed_windows(w, dtype) for w in windows]
        return cls(groups, [serde.elements_of(w) for w in windows], size)


class LinkPayloads:
    """One link's payload path, agreed at each `open` and dropped with its stream."""

    def __init__(
        self,
        params: torch.Tensor,
        segments: Sequence[Segment],
        start: int,
        security: SecurityConfig,
        timeout_s: float,
        *,
        shared_memory: bool,
        bulk_channel: bool,
    ) -> None:
        self._payload_bytes = params.numel() * params.element_size()
        self._segments, self._start = segments, start
        self._security, self._timeout_s = security, timeout_s
        # Offer the shard shared memory (it accepts when on the same host).
        self.offer_shared_memory = shared_memory
        # Ask the shard for a bulk channel; turned off for good once connecting to one failed
        # (a firewall between the hosts): inline then.
        self.ask_bulk_channel = bulk_channel
        self._shared: shm.SharedStream | None = None
        self._bulk: bulk.BulkStream | None = None
        # The chunk headers of a shared-memory (or bulk) push depend only on the dtype and on
        # whether the stream is piecewise: built once. With them, each message's payload bytes.
        self._headers: dict[tuple[torch.dtype, bool], _PushLayout] = {}
        # A bulk push's payload (in the wire dtype) from `stage` until its last message went.
        self._outgoing: torch.Tensor | None = None

    @property
    def shared_memory(self) -> bool:
        """Whether payloads on the current stream travel through shared memory."""
        return self._shared is not None

    @property
    def transport(self) -> str:
        """How payloads on the current stream travel, in words."""
        if self._shared is not None:
            return "through shared memory"
        if self._bulk is None:
            return "inline (gRPC)"
        return "on a bulk channel, message by message" if self._bulk.piecewise else "on a bulk channel"

    def segment_names(self) -> list[str]:
        """The shared-memory segments' names (none once unlinked from the file system's view)."""
        return [self._shared.push.name, self._shared.params.name] if self._shared is not None else []

    async def offer(self, opening: shard_pb.ExchangeOpen) -> None:
        """Fills in what a new stream offers the shard (shared memory, made off the event loop:
        allocating a large slice's pages takes a while) and asks of it (a bulk channel)."""
        self.drop()
        opening.bulk = self.ask_bulk_channel
        opening.bulk_return_connection = self.ask_bulk_channel
        if self.offer_shared_memory:
            self._shared = await shm.create_off_loop(self._payload_bytes)
            if self._shared is not None:
                opening.shared_memory.CopyFrom(self._shared.offer())

    def offered(self) -> None:
        """The open was answered, or never will be: the segments' names go (the shard mapped
        them by now or never will)."""
        if self._shared is not None:
            self._shared.unlink()

    async def agree(self, opened: shard_pb.ExchangeOpened, host: str, where: str) -> None:
        """Keeps what the shard accepted: its shared memory, else the bulk channel it offered
        (connected now; piecewise where range replies were agreed). The shard then expects
        every payload of the stream there: if the connection fails, this raises
        UnavailableError and stops asking, so the link's reconnection opens the next stream inline."""
        if not opened.shared_memory:
            self._drop_shared()
        if self._shared is None and opened.HasField("bulk"):
            try:
                self._bulk = await bulk.connect(
                    host, opened.bulk, self._security, self._payload_bytes, self._timeout_s, opened.range_replies
                )
            except UnavailableError as exc:
                self.ask_bulk_channel = False
                log.warning("%s: %s; payloads travel inline from now on", where, exc)
                raise UnavailableError(f"{where}: {exc}") from None

    def carries(self, sparse: torch.Tensor | None) -> bool:
        """Whether a push's payload leaves the messages (shared memory or bulk; dense only)."""
        return (self._shared is not None or self._bulk is not None) and sparse is None

    def push_headers(self, dtype: torch.dtype) -> list[list[frames.Encoded]]:
        """The messages' chunk groups of a push whose payload is carried (`carries`)."""
        return self._layout(dtype).groups

    def stage(self, grad_slice: torch.Tensor, dtype: torch.dtype) -> None:
        """Before the messages: one copy (narrowing under compression) into the segment the
        shard reads; on a bulk channel, the payload to send (narrowed if need be)."""
        if self._shared is not None:
            self._shared.push.tensor(dtype, grad_slice.numel()).copy_(grad_slice)
        elif self._bulk is not None:
            self._outgoing = grad_slice.to(dtype) if dtype != grad_slice.dtype else grad_slice.contiguous()

    async def sent(self, message: int, dtype: torch.dtype) -> int:
        """After message `message` of a carried push: on a piecewise bulk channel that message's
        payload, else after the last message the whole payload as one block (the shard reads it
        once the first message arrived). The last block returns once it has left this host, so
        that the next shard's upload gets the link to itself. The payload bytes sent (through
        shared memory, those carried) after the last message; 0 before."""
        layout = self._layout(dtype)
        last = message == len(layout.groups) - 1
        if self._bulk is None or self._outgoing is None:
            return layout.payload_bytes if last else 0
        if not self._bulk.piecewise and not last:
            return 0
        start, end = layout.elements[message] if self._bulk.piecewise else (0, self._outgoing.numel())
        sent = await self._bulk.send(self._outgoing[start:end], drained=last)
        if last:
            self._outgoing = None
        return sent

    def _layout(self, dtype: torch.dtype) -> _PushLayout:
        piecewise = self._bulk is not None and self._bulk.piecewise
        layout = self._headers.get((dtype, piecewise))
        if layout is None:
            layout = self._headers[(dtype, piecewise)] = _PushLayout.of(dtype, self._segments, self._start, piecewise)
        return layout

    async def resolve(self, chunks: Sequence[frames.ChunkView], block_read: bool, field: str) -> tuple[int, bool]:
        """Points a reply's chunks that name `shared` regions at their bytes (reading the reply's
        block off a bulk channel first, unless `block_read`); the payload bytes found and
        whether the reply's block has been read."""
        if self._bulk is not None:
            return await self._bulk.resolve(chunks, block_read, field)
        return shm.resolve(chunks, self._shared.params if self._shared is not None else None, field), block_read

    def _drop_shared(self) -> None:
        if self._shared is not None:
            self._shared.unlink()
            self._shared.close()
            self._shared = None

    def drop(self) -> None:
        """Frees the shared memory and the bulk channel, however the stream ended."""
        self._drop_shared()
        if self._bulk is not None:
            self._bulk.close()
            self._bulk = None
