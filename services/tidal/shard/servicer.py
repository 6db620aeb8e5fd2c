"""The ParameterShard gRPC servicer: serde and one call into the domain per message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import grpc
import torch

from tidal.core.compression import wire_dtype
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from tidal.shard.runtime import ShardRuntime
from tidal.transport import frames, shm
from tidal.transport.errors import translate_errors
from tidal.transport.guard import require_member
from tidal.transport.serde import SliceAssembler
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc

_OUTCOME_TO_PROTO = {
    "applied": shard_pb.PUSH_OUTCOME_APPLIED,
    "buffered": shard_pb.PUSH_OUTCOME_BUFFERED,
    "duplicate": shard_pb.PUSH_OUTCOME_DUPLICATE,
    "dropped_late": shard_pb.PUSH_OUTCOME_DROPPED_LATE,
    "rejected_stale": shard_pb.PUSH_OUTCOME_REJECTED_STALE,
}

SERVICE_NAME = shard_pb.DESCRIPTOR.services_by_name["ParameterShard"].full_name
# Most PushChunk messages one push may take: a 16 GiB slice at the default chunk size.
MAX_CHUNKS_PER_PUSH = 1 << 14


def _check_continuation(push: frames.PushView, pending: frames.PushView, chunks: int) -> None:
    """A multi-message push keeps one push_id and a bounded number of messages."""
    if push.push_id != pending.push_id:
        raise InvalidArgumentError(
            f"push.push_id: {push.push_id!r} started before push {pending.push_id!r} ended (last=true)"
        )
    if chunks > MAX_CHUNKS_PER_PUSH:
        raise InvalidArgumentError(f"push: more than {MAX_CHUNKS_PER_PUSH} messages in one push")


class Runtimes(Protocol):
    # The running job, if any.
    runtime: ShardRuntime | None
    # The running job or, after it ended, the last one (its final parameters stay readable).
    last_runtime: ShardRuntime | None
    # True while the process shuts down: pushes are refused with UNAVAILABLE.
    draining: bool

    def worker_resumed(self, worker_id: str, last_version: int, completed_pushes: int) -> None:
        """A worker reconnected and said what it saw of this shard index before."""
        ...

    def pushed(self) -> None:
        """A push was handled (a checkpoint may be due)."""
        ...


class ShardServicer(shard_grpc.ParameterShardServicer):
    def __init__(self, runtimes: Runtimes, shared_memory: bool | None = None) -> None:
        self._runtimes = runtimes
        # Accept workers' offers of shared memory (None: as TIDAL_SHARED_MEMORY says).
        self._shared_memory = shm.enabled() if shared_memory is None else shared_memory

    def _runtime(self, job_id: str, running: bool = True) -> ShardRuntime:
        if running and self._runtimes.draining:
            raise UnavailableError("shard: shutting down; reconnect once it restarted")
        runtime = self._runtimes.runtime if running else self._runtimes.last_runtime
        if runtime is None:
            raise FailedPreconditionError(f"job_id: this shard has no running job (asked for {job_id!r})")
        if runtime.job_id != job_id:
            raise FailedPreconditionError(f"job_id: this shard serves job {runtime.job_id!r}, not {job_id!r}")
        return runtime

    @translate_errors
    async def Exchange(
        self, request_iterator: AsyncIterator[frames.Frame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[shard_pb.ExchangeResponse | bytes]:
        # Requests arrive decoded by transport/frames.py (see `add_to_server`); parameters
        # leave pre-encoded.
        first = await anext(request_iterator, None)
        if first is None or first.kind != "open":
            raise InvalidArgumentError("open: the first message of an Exchange stream must be 'open'")
        opened = first.body
        require_member(opened.worker_id, "open.worker_id")
        runtime = self._runtime(opened.job_id)
        state = runtime.state
        await runtime.wait_for_epoch(opened.membership_epoch, state.spec.step_timeout_s)
        state.check_sender(opened.worker_id, opened.membership_epoch)
        if opened.last_version or opened.completed_pushes:
            self._runtimes.worker_resumed(opened.worker_id, opened.last_version, opened.completed_pushes)
        start, end = state.shard_map.ranges[state.shard_index]
        shared = self._map_offer(opened, runtime)
        timeout_s = state.spec.step_timeout_s
        # Pushes are assembled in a scratch buffer the shard's streams share, never in the
        # parameters, so a bad push changes nothing.
        scratch: torch.Tensor | None = None
        pending: frames.PushView | None = None
        assembler: SliceAssembler | None = None
        chunks = 0
        try:
            yield shard_pb.ExchangeResponse(
                opened=shard_pb.ExchangeOpened(
                    shard_index=state.shard_index,
                    version=state.version,
                    range=common_pb.ShardRange(shard=state.shard_index, start=start, end=end),
                    shared_memory=shared is not None,
                )
            )
            async for request in request_iterator:
                runtime.metrics.received.inc(request.nbytes)
                kind = request.kind
                if kind == "pull":
                    await self._wait_for_version(runtime, request.body.min_version, timeout_s)
                    for params in runtime.serve(opened.worker_id, shared):
                        yield params
                elif kind == "push":
                    push = request.body
                    if pending is None or assembler is None:
                        pending, chunks = push, 0
                        scratch = await runtime.scratch.take()
                        assembler = SliceAssembler(
                            state.segments, runtime.range_start, scratch, "push.chunks",
                            wire_dtype(state.spec.compression),
                        )  # fmt: skip
                    chunks += 1
                    try:
                        _check_continuation(push, pending, chunks)
                        in_shared = shm.resolve(push.chunks, shared.push if shared else None, "push.chunks")
                        runtime.metrics.received.inc(in_shared)
                        assembler.add(push.chunks)
                        grad = assembler.finish() if push.last else None
                    except InvalidArgumentError:
                        runtime.reject_bad_input()
                        raise
                    if grad is None:
                        continue
                    if self._runtimes.draining:
                        raise UnavailableError(
                            f"shard {state.shard_index}: shutting down; push {pending.push_id} was not applied, "
                            "push it again once the shard restarted"
                        )
                    await runtime.wait_for_epoch(pending.membership_epoch, timeout_s)
                    result = await runtime.push(
                        opened.worker_id,
                        pending.push_id,
                        pending.base_version,
                        pending.membership_epoch,
                        grad,
                        pending.clock,
                    )
                    # The gradient is in the parameters (or a barrier's sum) now: free the buffer.
                    runtime.scratch.give_back(scratch)
                    scratch = grad = None
                    self._runtimes.pushed()
                    yield shard_pb.ExchangeResponse(
                        ack=shard_pb.PushAck(
                            push_id=pending.push_id,
                            outcome=_OUTCOME_TO_PROTO[result.outcome.value],
                            version=result.version,
                            staleness=result.staleness,
                        )
                    )
                    pending = assembler = None
                    await self._wait_for_version(runtime, result.serve_version, timeout_s)
                    for params in runtime.serve(opened.worker_id, shared):
                        yield params
                else:
                    raise InvalidArgumentError(f"kind: unexpected message {kind!r} on an open Exchange stream")
        finally:
            # A push refused, or a stream that broke or was cancelled in the middle of one.
            runtime.scratch.give_back(scratch)
            if shared is not None:
                shared.close()

    def _map_offer(self, opened: shard_pb.ExchangeOpen, runtime: ShardRuntime) -> shm.SharedStream | None:
        """The shared memory a worker on this host offered for the payloads (transport/shm.py),
        mapped; None if there was no offer, this shard refuses them, or it cannot map it."""
        shared = None
        if opened.HasField("shared_memory") and self._shared_memory:
            params = runtime.state.params
            payload_bytes = params.numel() * params.element_size()
            shared = shm.SharedStream.accept(opened.shared_memory, payload_bytes, "open.shared_memory")
        runtime.metrics.streams["shared_memory" if shared else "grpc"].inc()
        return shared

    async def _wait_for_version(self, runtime: ShardRuntime, version: int, timeout_s: float) -> None:
        try:
            await runtime.wait_for_version(version, timeout_s)
        except FailedPreconditionError:
            if self._runtimes.draining:
                raise UnavailableError(
                    f"shard {runtime.state.shard_index}: shut down before version {version}; "
                    "reconnect once it restarted"
                ) from None
            raise

    @translate_errors
    async def ReadParameters(
        self, request: shard_pb.ReadParametersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        runtime = self._runtime(request.job_id, running=False)
        for params in runtime.params():
            yield frames.read_parameters_response(params)

    @translate_errors
    async def GetShardInfo(
        self, request: shard_pb.GetShardInfoRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb.GetShardInfoResponse:
        runtime = self._runtimes.last_runtime
        if runtime is None:
            return shard_pb.GetShardInfoResponse()
        state = runtime.state
        start, end = state.shard_map.ranges[state.shard_index]
        return shard_pb.GetShardInfoResponse(
            job_id=runtime.job_id,
            shard_index=state.shard_index,
            version=state.version,
            range=common_pb.ShardRange(shard=state.shard_index, start=start, end=end),
            updates_applied=state.counters.updates_applied,
            updates_rejected=state.counters.updates_rejected,
            membership_epoch=state.membership_epoch,
        )


def add_to_server(servicer: ShardServicer, server: grpc.aio.Server) -> None:
    """The generated `add_ParameterShardServicer_to_server`, with the tensor-carrying
    messages framed by transport/frames.py (still valid protobuf for any client)."""
    handlers = {
        "Exchange": grpc.stream_stream_rpc_method_handler(
            servicer.Exchange, request_deserializer=frames.decode_request, response_serializer=frames.serialize
        ),
        "ReadParameters": grpc.unary_stream_rpc_method_handler(
            servicer.ReadParameters,
            request_deserializer=shard_pb.ReadParametersRequest.FromString,
            response_serializer=frames.serialize,
        ),
        "GetShardInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetShardInfo,
            request_deserializer=shard_pb.GetShardInfoRequest.FromString,
            response_serializer=shard_pb.GetShardInfoResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
