"""One Exchange stream's protocol, without gRPC: a worker opens it, then pulls and pushes.

`ExchangeSession` is handed decoded frames (transport/frames.py) and returns the responses to
send; the servicer only adapts it to gRPC. It holds one stream's state: the push being
assembled, or in plain sync taken range by range (core/range_barrier.py), how its payloads
travel (shard/payloads.py), the worker it speaks for. `ShardRuntime` is the single writer.

Whatever a member sends, the work it causes is bounded: a message holds at most
`MAX_CHUNKS_PER_MESSAGE` chunks (checked while decoding), a push at most a small multiple of
the chunks an honest worker cuts the slice into, and assembly gives the event loop back every
`chunks_per_turn` chunks, so heartbeats and health keep flowing. A stream that ends in the
middle of a push ends with an error, never with OK.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import torch

from tidal.core.clock_sums import RangedPush
from tidal.core.compression import wire_dtype
from tidal.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NonFiniteGradientError,
    UnavailableError,
)
from tidal.core.recovery import check_resume
from tidal.core.shard_map import Segment
from tidal.shard.convert import push_ack
from tidal.shard.payloads import BulkPort, StreamPayloads
from tidal.shard.runtime import RangedServe, ShardRuntime
from tidal.shard.runtimes import Runtimes, find_runtime
from tidal.transport import frames
from tidal.transport.limits import CHUNK_BYTES
from tidal.transport.serde import SliceAssembler
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import shard_pb2 as shard_pb

Response = shard_pb.ExchangeResponse | bytes


@dataclass(frozen=True)
class ExchangeLimits:
    """How much work one stream's messages may cause."""

    # Chunks assembled before the event loop gets a turn (a few milliseconds of work).
    chunks_per_turn: int = 64
    # A push may hold this many times the chunks an honest worker cuts the slice into.
    push_chunk_factor: int = 2

    def push_chunks(self, segments: Sequence[Segment], element_size: int) -> int:
        """Most chunks one push may carry: an honest worker sends one per `CHUNK_BYTES` window
        of each tensor inline, one per tensor through shared memory, never more."""
        windows = sum(math.ceil(seg.length * element_size / CHUNK_BYTES) for seg in segments)
        return self.push_chunk_factor * max(1, windows)


@dataclass
class _PendingPush:
    """A push whose messages are still arriving: its first message's header, where it is
    assembled, and how many chunks it carried so far."""

    header: frames.PushView
    scratch: torch.Tensor
    assembler: SliceAssembler
    chunks: int = 0
    # The shard's initial parameters (an `init`), not a gradient.
    init: bool = False
    # On a bulk channel: the push's block was read off the socket.
    block_read: bool = False


@dataclass
class _RangedPending:
    """A push taken range by range (core/range_barrier.py) and the parameters it is sent back."""

    header: frames.PushView
    push: RangedPush
    checker: SliceAssembler
    serve: RangedServe
    chunks: int = 0
    # Where the next chunk must start: chunks travel in slice order (a resent push's repeats are skipped).
    next_start: int = 0
    # On a bulk channel: a block of the push was read off the socket.
    block_read: bool = False


class ExchangeSession:
    """The protocol of one Exchange stream: `open` with the first frame, `handle` every frame
    after it, `end` when the worker half-closed, `close` always (it frees what the stream held)."""

    def __init__(
        self,
        runtimes: Runtimes,
        accept_shared_memory: bool,
        authorize: Callable[[str, str], None],
        limits: ExchangeLimits | None = None,
        bulk_port: BulkPort | None = None,
    ) -> None:
        self._runtimes = runtimes
        self._accept_shared_memory = accept_shared_memory
        # Offered to a worker that asks for a bulk channel (transport/bulk.py); None: never.
        self._bulk_port = bulk_port
        # Raises unless the caller may speak for the worker named in the open (transport/guard.py).
        self._authorize = authorize
        self._limits = limits or ExchangeLimits()
        self.worker_id = ""
        self._runtime: ShardRuntime | None = None
        self._payloads: StreamPayloads | None = None
        self._pending: _PendingPush | None = None
        self._ranged: _RangedPending | None = None
        self._range_replies = False  # agreed at open: pushes may be answered range by range
        self._push_chunks = 0

    async def open(self, frame: frames.Frame | None) -> Response:
        """Checks the worker's open (identity, job, membership, resume counters), agrees on how
        payloads travel (shared memory, a bulk channel, inline) and answers `opened`."""
        if frame is None or frame.kind != "open":
            raise InvalidArgumentError("open: the first message of an Exchange stream must be 'open'")
        opened: shard_pb.ExchangeOpen = frame.body
        self._authorize(opened.worker_id, "open.worker_id")
        runtime = find_runtime(self._runtimes, opened.job_id)
        state = runtime.state
        await runtime.wait_for_epoch(opened.membership_epoch, state.spec.step_timeout_s)
        state.check_sender(opened.worker_id, opened.membership_epoch)
        state.check_initial_digest(opened.worker_id, opened.init_digest)
        check_resume(state.spec, opened.last_version, opened.completed_pushes, "open")
        self.worker_id, self._runtime = opened.worker_id, runtime
        self._push_chunks = self._limits.push_chunks(state.segments, state.params.element_size())
        if opened.last_version or opened.completed_pushes:
            self._runtimes.worker_resumed(opened.worker_id, opened.last_version, opened.completed_pushes)
        self._payloads = StreamPayloads(runtime, self._accept_shared_memory, self._bulk_port)
        # Only a plain sync job takes pushes range by range: other workers need no reply reader.
        ranged = opened.range_replies and state.takes_ranges
        shared_memory, bulk, self._range_replies = self._payloads.agree(opened, ranged)
        start, end = state.shard_map.ranges[state.shard_index]
        return shard_pb.ExchangeResponse(
            opened=shard_pb.ExchangeOpened(
                shard_index=state.shard_index,
                version=state.version,
                range=common_pb.ShardRange(shard=state.shard_index, start=start, end=end),
                shared_memory=shared_memory,
                bulk=bulk,
                range_replies=self._range_replies,
            )
        )

    async def handle(self, frame: frames.Frame) -> AsyncIterator[Response]:
        """The responses to one frame: parameters for a pull; for the last message of a push,
        its ack and then the parameters the worker may use next; nothing for a push's other
        messages."""
        runtime = self._opened()
        runtime.metrics.received.inc(frame.nbytes)
        if frame.kind == "pull":
            await self._wait_for_version(frame.body.min_version)
            async for params in self._serve():
                yield params
        elif frame.kind == "push" and (self._ranged is not None or await self._open_ranged(frame.body)):
            async for response in self._take_ranged(frame.body):
                yield response
        elif frame.kind == "push":
            grad = await self._assemble(frame.body, init=False)
            if grad is not None and self._pending is not None:
                async for response in self._apply(self._pending, grad):
                    yield response
        elif frame.kind == "init":
            values = await self._assemble(frame.body, init=True)
            if values is not None and self._pending is not None:
                yield await self._initialize(self._pending, values)
        else:
            raise InvalidArgumentError(f"kind: unexpected message {frame.kind!r} on an open Exchange stream")

    def end(self) -> None:
        """The worker half-closed the stream: fine between pushes, an error inside one."""
        if self._pending is not None or self._ranged is not None:
            self._opened().reject_bad_input()
            whole = self._pending is not None
            header = self._pending.header if whole else self._ranged.header  # type: ignore[union-attr]
            kept = "nothing of it was applied" if whole else "what came stays in the step's sum till it is resent"
            raise InvalidArgumentError(
                f"push: the stream ended inside push {header.push_id!r} (no message with last=true came); {kept}"
            )

    def close(self) -> None:
        """Frees the push buffer, the shared memory and the bulk channel, however the stream ended."""
        if self._pending is not None and self._runtime is not None:
            self._runtime.scratch.give_back(self._pending.scratch)
        self._pending = None
        if self._ranged is not None:
            self._ranged.serve.close()
            self._ranged = None
        if self._payloads is not None:
            self._payloads.close()
            self._payloads = None

    async def _serve(self) -> AsyncIterator[Response]:
        """The current parameters: their messages, then (on a bulk channel) their block."""
        runtime, payloads = self._opened(), self._payloads
        target = await payloads.target() if payloads is not None else None
        while runtime.state.partial:  # another stream's push began the next version meanwhile
            await runtime.wait_for_version(runtime.state.version, runtime.state.spec.step_timeout_s)
        piecewise = payloads is not None and payloads.piecewise
        elements = runtime.reply_elements(piecewise=True) if piecewise else []
        with contextlib.closing(runtime.serve(self.worker_id, target, piecewise)) as messages:
            for i, params in enumerate(messages):
                yield params
                if piecewise:
                    await payloads.sent_message(elements[i])  # type: ignore[union-attr]
        if payloads is not None:
            await payloads.served()

    def _opened(self) -> ShardRuntime:
        if self._runtime is None:
            raise FailedPreconditionError("open: the stream was not opened")
        return self._runtime

    async def _assemble(self, push: frames.PushView, init: bool) -> torch.Tensor | None:
        """Adds one push (or init) message to the one it belongs to; the tensor once it is complete."""
        runtime = self._opened()
        pending = self._pending
        if pending is None:
            state = runtime.state
            scratch = await runtime.scratch.take()
            # Initial parameters travel in full precision; gradients in the job's wire dtype.
            wire = None if init else wire_dtype(state.spec.compression)
            field = "init.chunks" if init else "push.chunks"
            assembler = SliceAssembler(state.segments, runtime.range_start, scratch, field, wire)
            pending = self._pending = _PendingPush(push, scratch, assembler, init=init)
        try:
            if pending.init != init:
                raise InvalidArgumentError(
                    f"kind: an {'init' if init else 'push'} message inside "
                    f"{'init' if pending.init else 'push'} {pending.header.push_id!r} (no message with last=true came)"
                )
            self._check_continuation(push, pending)
            assert self._payloads is not None  # opened
            found, pending.block_read = await self._payloads.inbound(push.chunks, pending.block_read, "push.chunks")
            runtime.metrics.received.inc(found)
            step = self._limits.chunks_per_turn
            for first in range(0, len(push.chunks), step):
                if first:
                    await asyncio.sleep(0)  # the loop's turn: other streams, heartbeats, health
                pending.assembler.add(push.chunks[first : first + step])
            return pending.assembler.finish() if push.last else None
        except InvalidArgumentError:
            runtime.reject_bad_input()
            raise

    def _check_continuation(self, push: frames.PushView, pending: _PendingPush | _RangedPending) -> None:
        """A push keeps one id over its messages, each message carries chunks, and the whole
        push no more than the slice needs."""
        if push.push_id != pending.header.push_id:
            raise InvalidArgumentError(
                f"push.push_id: {push.push_id!r} started before push {pending.header.push_id!r} ended (last=true)"
            )
        if not push.chunks:
            raise InvalidArgumentError("push.chunks: a push message carries no chunks")
        pending.chunks += len(push.chunks)
        if pending.chunks > self._push_chunks:
            raise InvalidArgumentError(
                f"push.chunks: more than {self._push_chunks} chunks in push {pending.header.push_id!r}; "
                "this shard's slice needs fewer"
            )

    async def _open_ranged(self, push: frames.PushView) -> bool:
        """At a push's first message: whether the shard takes it range by range (a plain sync
        job's current clock, on a stream that agreed to range replies)."""
        if not self._range_replies or self._pending is not None:
            return False
        runtime = self._opened()
        self._check_not_draining(push.push_id)
        await runtime.wait_for_epoch(push.membership_epoch, runtime.state.spec.step_timeout_s)
        taken = runtime.open_ranged(self.worker_id, push.push_id, push.base_version, push.membership_epoch, push.clock)
        if taken is None:
            return False
        state, payloads = runtime.state, self._payloads
        wire = wire_dtype(state.spec.compression)
        checker = SliceAssembler(state.segments, runtime.range_start, state.params.detach(), "push.chunks", wire)
        target = await payloads.target() if payloads is not None and payloads.piecewise else None
        self._ranged = _RangedPending(push, taken, checker, runtime.serve_ranged(self.worker_id, taken.clock, target))
        return True

    async def _take_ranged(self, push: frames.PushView) -> AsyncIterator[Response]:
        """One message of a ranged push: its chunks go into the clock's sum as they come, and
        the parameters of every range that completed go back at once. After the last message
        its ack, then the rest of the parameters as their ranges complete."""
        runtime, ranged, payloads = self._opened(), self._ranged, self._payloads
        assert ranged is not None and payloads is not None  # _open_ranged
        try:
            self._check_continuation(push, ranged)
            found, ranged.block_read = await payloads.inbound(push.chunks, ranged.block_read, "push.chunks")
            runtime.metrics.received.inc(found)
            for i, chunk in enumerate(push.chunks):
                if i and i % self._limits.chunks_per_turn == 0:
                    await asyncio.sleep(0)  # the loop's turn: other streams, heartbeats, health
                start, values = ranged.checker.check(chunk)
                where = f"push.chunks[{ranged.checker.seen - 1}]"
                if start != ranged.next_start:
                    raise InvalidArgumentError(
                        f"{where}.offset: starts at element {start} of the slice, not right after the chunk "
                        f"before it (element {ranged.next_start}): a push's chunks travel in slice order"
                    )
                ranged.next_start = start + values.numel()
                await runtime.add_ranged(ranged.push, start, values, where)
            result = runtime.state.finish_ranged(ranged.push) if push.last else None
        except NonFiniteGradientError:
            raise  # counted as non-finite by add_ranged
        except InvalidArgumentError:
            runtime.reject_bad_input()
            raise
        async for params in self._ranged_replies(ranged):
            yield params
        if result is None:
            return
        self._runtimes.pushed()
        yield push_ack(push.push_id, result)
        timeout_s = runtime.state.spec.step_timeout_s
        while not ranged.serve.done:
            await runtime.wait_for_applied(ranged.push.clock, ranged.serve.next_end, timeout_s)
            async for params in self._ranged_replies(ranged):
                yield params
        ranged.serve.close()
        self._ranged = None

    async def _ranged_replies(self, ranged: _RangedPending) -> AsyncIterator[Response]:
        """The parameters messages whose ranges are applied, each (piecewise) with its payload after it."""
        assert self._payloads is not None  # opened
        for elements, params in ranged.serve.ready():
            yield params
            await self._payloads.sent_message(elements)

    async def _initialize(self, pending: _PendingPush, values: torch.Tensor) -> Response:
        """Sets the shard's initial parameters from a worker's (the first to send them), or
        checks that they equal those set; acknowledged APPLIED or DUPLICATE."""
        runtime = self._opened()
        header = pending.header
        try:
            await runtime.wait_for_epoch(header.membership_epoch, runtime.state.spec.step_timeout_s)
            applied = await runtime.initialize(self.worker_id, header.membership_epoch, values)
        finally:
            runtime.scratch.give_back(pending.scratch)
            self._pending = None
        if applied:
            self._runtimes.initialized()
        outcome = shard_pb.PUSH_OUTCOME_APPLIED if applied else shard_pb.PUSH_OUTCOME_DUPLICATE
        return shard_pb.ExchangeResponse(
            ack=shard_pb.PushAck(push_id=header.push_id, outcome=outcome, version=runtime.state.version)
        )

    async def _apply(self, pending: _PendingPush, grad: torch.Tensor) -> AsyncIterator[Response]:
        runtime = self._opened()
        header = pending.header
        timeout_s = runtime.state.spec.step_timeout_s
        self._check_not_draining(header.push_id)
        await runtime.wait_for_epoch(header.membership_epoch, timeout_s)
        result = await runtime.push(
            self.worker_id, header.push_id, header.base_version, header.membership_epoch, grad, header.clock
        )
        # The gradient is in the parameters (or a barrier's sum) now: free the buffer.
        runtime.scratch.give_back(pending.scratch)
        self._pending = None
        self._runtimes.pushed()
        yield push_ack(header.push_id, result)
        await self._wait_for_version(result.serve_version)
        async for params in self._serve():
            yield params

    def _check_not_draining(self, push_id: str) -> None:
        if self._runtimes.draining:
            raise UnavailableError(
                f"shard {self._opened().state.shard_index}: shutting down; push {push_id} was not applied, "
                "push it again once the shard restarted"
            )

    async def _wait_for_version(self, version: int) -> None:
        runtime = self._opened()
        try:
            await runtime.wait_for_version(version, runtime.state.spec.step_timeout_s)
        except FailedPreconditionError:
            if self._runtimes.draining:
                raise UnavailableError(
                    f"shard {runtime.state.shard_index}: shut down before version {version}; "
                    "reconnect once it restarted"
                ) from None
            raise
