"""A worker's data-plane connection to one shard: one Exchange stream for the whole job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import grpc
import torch

from tidal.core.errors import DeadlineExceededError, FailedPreconditionError, TidalError, UnavailableError
from tidal.core.policy import next_clock
from tidal.core.shard_map import ShardMap
from tidal.transport import frames, serde
from tidal.transport.errors import error_for_status, error_from_rpc
from tidal.transport.server import create_channel
from tidal.transport.tls import SecurityConfig
from tidal.v1 import shard_pb2 as shard_pb
from tidal.worker.metrics import PhaseTimes
from tidal.worker.payloads import LinkPayloads

log = logging.getLogger(__name__)
# Reconnecting to a shard that went away: jittered exponential backoff between these bounds,
# in seconds, for as long as the job's checkpoint.restart_timeout_s.
RECONNECT_FIRST_DELAY_S = 0.1
RECONNECT_MAX_DELAY_S = 2.0
# A reply is waited for this much longer than the shard waits for a version, so a shard's
# DEADLINE_EXCEEDED, which says what its barrier waits for, arrives before the worker gives up.
REPLY_GRACE_S = 5.0


class ShardLink:
    def __init__(
        self,
        job_id: str,
        worker_id: str,
        epoch: int,
        shard_index: int,
        address: str,
        shard_map: ShardMap,
        params: torch.Tensor,
        timeout_s: float,
        params_wire: torch.dtype | None = None,
        *,
        security: SecurityConfig,
        shared_memory: bool,
        bulk_channel: bool = False,
        upload_turns: asyncio.Lock | None = None,
        initial_digest: str = "",
    ) -> None:
        self.job_id, self.worker_id, self.epoch = job_id, worker_id, epoch
        self.shard_index, self.address = shard_index, address
        self.start, self.end = shard_map.ranges[shard_index]
        self.segments = shard_map.segments(shard_index)
        # The worker's view of this shard's parameters: a slice of the model's flat buffer.
        self.params = params[self.start : self.end]
        # The digest of this slice's initial values (core/digests.py), which the shard checks
        # against the ones it started from (ExchangeOpen.init_digest); "": not checked.
        self.initial_digest = initial_digest
        self.timeout_s = timeout_s
        # Parameters may arrive narrower than the model holds them (bf16 compression); they
        # are widened as they are copied into the model.
        self.params_wire = params_wire
        self._security = security
        # How the payloads travel: shared memory, a bulk channel or inline (worker/payloads.py).
        self.payloads = LinkPayloads(
            self.params, self.segments, self.start, security, timeout_s,
            shared_memory=shared_memory, bulk_channel=bulk_channel,
        )  # fmt: skip
        # Shared by a worker's links: one push uploads at a time, in shard order, so the first
        # shard has every worker's slice (and sends its parameters down) while the next slice
        # still goes up. Over one link the bytes take as long either way; the way down overlaps.
        self._upload_turns = upload_turns or asyncio.Lock()
        self.version = -1
        # The clock of the last push that completed here: each shard has its own (next_clock).
        # It carries on over a shard restored from an older checkpoint: in sync the clock is
        # only how the shard tells a worker's last push (ShardView.finished), and that must
        # still be the job's last clock; ssp and auto, keyed by clock, refuse a restore.
        self.clock = -1
        # Since the last (re)connection: the newest version seen in an ack or in parameters,
        # and (over the whole job) the pushes that completed here. A shard restored from a
        # checkpoint counts what it lost from them (ExchangeOpen).
        self.newest_version = -1
        self.completed_pushes = 0
        self.reconnects = 0
        # Set when the coordinator says where the shard restarted: a waiting reconnect goes at once.
        self._moved = asyncio.Event()
        self.bytes_sent = 0
        self.bytes_received = 0
        self._channel = create_channel(address, security)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._range_replies = False

    def _where(self, step: int | None = None) -> str:
        at = f" at step {step}" if step is not None else ""
        return f"shard {self.shard_index} ({self.address}){at}"

    async def open(self) -> None:
        # Tensor-carrying messages are framed by hand (transport/frames.py), still valid protobuf.
        self._call = self._channel.stream_stream(
            frames.EXCHANGE_METHOD, request_serializer=frames.serialize, response_deserializer=frames.decode_response
        )()
        opening = shard_pb.ExchangeOpen(
            job_id=self.job_id,
            worker_id=self.worker_id,
            membership_epoch=self.epoch,
            last_version=max(self.newest_version, 0),
            completed_pushes=self.completed_pushes,
            init_digest=self.initial_digest,
            range_replies=True,
        )
        await self.payloads.offer(opening)
        try:
            await self._write(shard_pb.ExchangeRequest(open=opening))
            reply = await self._read(None)
        finally:
            self.payloads.offered()
        if reply.kind != "opened":
            raise UnavailableError(f"{self._where()}: expected 'opened', got {reply.kind}")
        await self.payloads.agree(reply.body, self.address.rsplit(":", 1)[0].strip("[]"), self._where())
        # The shard may send a push's parameters range by range, before its ack.
        self._range_replies = reply.body.range_replies
        log.info("%s: tensors travel %s", self._where(), self.transport)
        if reply.body.version < 0:
            await self._send_initial()

    async def _send_initial(self) -> None:
        """A new job's shard has no parameters (it builds no model): this worker's initial
        slice becomes them, unless another worker's equal values came first (DUPLICATE).
        Only before training: the model still holds the values it was built with."""
        chunks = serde.encoded_chunks(self.params, self.segments, self.start)
        groups = list(serde.group_encoded(chunks))
        for i, group in enumerate(groups):
            last = i == len(groups) - 1
            await self._write(frames.encode_push("init", -1, self.epoch, 0, 0, group, last, init=True))
            self.bytes_sent += sum(c.size for c in group)
        reply = await self._read(None)
        if reply.kind != "ack":
            raise UnavailableError(f"{self._where()}: expected an ack of the initial parameters, got {reply.kind}")
        log.info(
            "%s: initial parameters %s",
            self._where(),
            "set" if reply.body.outcome == shard_pb.PUSH_OUTCOME_APPLIED else "already set by another worker",
        )

    @property
    def shared_memory(self) -> bool:
        """Whether payloads on the current stream travel through shared memory."""
        return self.payloads.shared_memory

    @property
    def transport(self) -> str:
        """How payloads on the current stream travel, in words."""
        return self.payloads.transport

    async def connect(self, deadline_s: float) -> None:
        """Opens the stream and pulls the first parameters. A shard that does not answer the
        first connection attempt (its host is loaded, its loop is busy setting up the job) is
        retried with backoff within `deadline_s`, as after a restart, instead of failing the job."""
        try:
            await self.open()
            await self.pull(0)
        except (UnavailableError, DeadlineExceededError) as exc:
            log.warning("%s; retrying for up to %.0fs", exc, deadline_s)
            await self.recover(None, deadline_s)

    async def pull(self, min_version: int, step: int | None = None) -> int:
        await self._write(shard_pb.ExchangeRequest(pull=shard_pb.Pull(min_version=min_version)))
        await self._receive(step)
        return self.version

    def next_clock(self) -> int:
        return next_clock(self.clock, self.version)

    async def push(
        self,
        push_id: str,
        clock: int | None,
        grads: torch.Tensor,
        num_samples: int,
        wire: torch.dtype | None = None,
        sparse: torch.Tensor | None = None,
    ) -> tuple[shard_pb.PushAck, PhaseTimes]:
        """Pushes this shard's slice of the flat gradient and receives the parameters it may use
        next (into the model); returns the ack and where the time went. `clock` None: this
        shard's next clock (`next_clock`)."""
        clock = self.next_clock() if clock is None else clock
        started = time.perf_counter()
        # With range replies the parameters come while the gradient still goes up: read them at once.
        reading = asyncio.create_task(self._receive(clock, with_ack=True)) if self._range_replies else None
        try:
            async with self._upload_turns:
                await self._upload(push_id, clock, grads, num_samples, wire, sparse)
        except BaseException:
            if reading is not None:
                reading.cancel()
                with contextlib.suppress(BaseException):
                    await reading
            raise
        uploaded = time.perf_counter()
        ack, acked, first = await (reading or self._receive(clock, with_ack=True))
        assert ack is not None and acked is not None  # with_ack
        done = time.perf_counter()
        pushed = uploaded if reading is not None else acked
        first = max(first, pushed)
        self.completed_pushes += 1
        self.clock = clock
        self.newest_version = max(self.newest_version, ack.version)
        return ack, PhaseTimes(pushed - started, first - pushed, done - first)

    async def _upload(
        self,
        push_id: str,
        clock: int,
        grads: torch.Tensor,
        num_samples: int,
        wire: torch.dtype | None,
        sparse: torch.Tensor | None,
    ) -> None:
        """Sends this shard's slice of the gradient: the push's messages and, on a bulk channel,
        its payload (after the last message, or piecewise after each)."""
        base = self.version  # the parameters the gradient came from (a range reply may update it meanwhile)
        grad_slice = grads[self.start : self.end]
        if self.payloads.carries(sparse):
            dtype = wire or grad_slice.dtype
            self.payloads.stage(grad_slice, dtype)
            groups = self.payloads.push_headers(dtype)
            for i, group in enumerate(groups):
                last = i == len(groups) - 1
                await self._write(frames.encode_push(push_id, base, self.epoch, clock, num_samples, group, last))
                self.bytes_sent += await self.payloads.sent(i, dtype)
        else:
            if wire is not None:
                grad_slice = grad_slice.to(wire)
            chunks = serde.encoded_chunks(grad_slice, self.segments, self.start, sparse=sparse)
            groups = list(serde.group_encoded(chunks))
            for i, group in enumerate(groups):
                last = i == len(groups) - 1
                await self._write(frames.encode_push(push_id, base, self.epoch, clock, num_samples, group, last))

    async def _receive(
        self, step: int | None, with_ack: bool = False
    ) -> tuple[shard_pb.PushAck | None, float | None, float]:
        """Reads one version's parameters into the model and, `with_ack`, a push's ack, which
        may come before them or (range replies) among them. Returns the ack, when it came and
        when the first parameters came."""
        assembler = serde.SliceAssembler(self.segments, self.start, self.params, "params.chunks", self.params_wire)
        ack, acked, first = None, None, None
        block_read = False  # on a bulk channel: this reply's block was read off the socket
        done = False
        while not done or (with_ack and ack is None):
            reply = await self._read(step)
            if reply.kind == "ack" and with_ack and ack is None:
                ack, acked = reply.body, time.perf_counter()
                continue
            if reply.kind != "params" or done:
                raise UnavailableError(f"{self._where(step)}: expected params, got {reply.kind}")
            first = first or time.perf_counter()
            found, block_read = await self.payloads.resolve(reply.body.chunks, block_read, "params.chunks")
            self.bytes_received += found
            assembler.add(reply.body.chunks)
            if done := reply.body.last:
                assembler.finish()
                self.version = reply.body.version
                self.newest_version = max(self.newest_version, self.version)
        assert first is not None
        return ack, acked, first

    async def push_recovering(
        self,
        push_id: str,
        clock: int | None,
        grads: torch.Tensor,
        num_samples: int,
        wire: torch.dtype | None,
        sparse: torch.Tensor | None,
        deadline_s: float,
    ) -> tuple[shard_pb.PushAck, PhaseTimes]:
        """`push`, surviving a restart of the shard: when the stream breaks it reconnects
        (`recover`, within `deadline_s`), receives the restored parameters and pushes the same
        gradient again under the same push id; a shard that already holds it answers DUPLICATE.
        Any other error fails at once: a refusal, or a bug on the shard (InternalError), which
        would fail the same way on every retry."""
        give_up = time.monotonic() + deadline_s
        while True:
            try:
                return await self.push(push_id, clock, grads, num_samples, wire, sparse)
            except UnavailableError as exc:
                left = give_up - time.monotonic()
                if left <= 0:
                    raise
                log.warning("%s; reconnecting for up to %.0fs", exc, left)
                await self.recover(clock, left)

    async def pull_recovering(self, min_version: int, deadline_s: float) -> int:
        """`pull`, reconnecting (within `deadline_s`) if the shard went away."""
        try:
            return await self.pull(min_version)
        except UnavailableError as exc:
            log.warning("%s; reconnecting for up to %.0fs", exc, deadline_s)
            await self.recover(None, deadline_s)
            return self.version

    def retarget(self, address: str) -> None:
        """The shard restarted at `address`: the next reconnection goes there, now."""
        self.address = address
        self._moved.set()

    async def recover(self, step: int | None, deadline_s: float) -> None:
        """Reconnects after the stream broke (the shard may have restarted, elsewhere) with
        jittered exponential backoff and pulls the shard's current parameters into the model.
        Raises, naming the shard and step, once `deadline_s` passed without success."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        delay = RECONNECT_FIRST_DELAY_S
        while True:
            if self._call is not None:
                self._call.cancel()
            await self._channel.close()
            # A fresh channel each try: no connection backoff carried over from the dead peer.
            self._channel = create_channel(self.address, self._security)
            try:
                await self.open()
                await self.pull(0, step)
            except (UnavailableError, FailedPreconditionError, DeadlineExceededError) as exc:
                if loop.time() + delay > give_up:
                    raise type(exc)(f"{self._where(step)}: not back within {deadline_s:.0f}s: {exc}") from None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._moved.wait(), delay * random.uniform(0.5, 1.5))
                self._moved.clear()
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
                continue
            self.reconnects += 1
            self.newest_version = self.version  # from now on, what this incarnation served
            return

    async def _write(self, msg: shard_pb.ExchangeRequest | bytes) -> None:
        assert self._call is not None, "open() first"
        try:
            # Bounded: a peer that stopped reading must not hang the worker.
            await asyncio.wait_for(self._call.write(msg), self.timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(f"{self._where()}: write not accepted within {self.timeout_s:.0f}s") from None
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, None) from None
        except asyncio.InvalidStateError:
            # The shard ended the stream before this write (it went away, or refused an earlier
            # message): report how it ended, as a read would, so a lost shard is reconnected to.
            code = await self._call.code()
            if code == grpc.StatusCode.OK:
                raise UnavailableError(f"{self._where()}: stream closed by the shard") from None
            err = error_for_status(code, await self._call.details())
            raise type(err)(f"{self._where()}: {err}") from None
        self.bytes_sent += len(msg) if isinstance(msg, bytes) else msg.ByteSize()

    async def _read(self, step: int | None) -> frames.Frame:
        assert self._call is not None, "open() first"
        try:
            reply = await asyncio.wait_for(self._call.read(), self.timeout_s + REPLY_GRACE_S)
        except TimeoutError:
            waited = self.timeout_s + REPLY_GRACE_S
            raise DeadlineExceededError(f"{self._where(step)}: no reply within {waited:.0f}s") from None
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, step) from None
        if reply is grpc.aio.EOF:
            raise UnavailableError(f"{self._where(step)}: stream closed by the shard")
        self.bytes_received += reply.nbytes
        return reply

    def _error(self, exc: grpc.aio.AioRpcError, step: int | None) -> TidalError:
        err = error_from_rpc(exc)
        return type(err)(f"{self._where(step)}: {err}")

    async def close(self) -> None:
        # Also after a cancelled push: grpc.aio cancels a call whose read or write was cancelled,
        # so a half-written stream is never written to again; cancelling it twice is harmless.
        if self._call is not None:
            self._call.cancel()
        await self._channel.close()
        self.payloads.drop()
