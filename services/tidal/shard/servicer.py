"""The ParameterShard gRPC servicer: adapts each call to the domain (shard/exchange.py for the
Exchange stream's protocol) and the domain's errors to status codes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from tidal.shard.convert import shard_info_to_proto
from tidal.shard.exchange import ExchangeSession
from tidal.shard.payloads import BulkPort
from tidal.shard.rows import RowHost, RowService
from tidal.shard.runtimes import find_runtime
from tidal.transport import frames
from tidal.transport.errors import translate_errors
from tidal.transport.guard import require_member
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc

SERVICE_NAME = shard_pb.DESCRIPTOR.services_by_name["ParameterShard"].full_name


class ShardServicer(shard_grpc.ParameterShardServicer):
    def __init__(self, runtimes: RowHost, shared_memory: bool, bulk_port: BulkPort | None = None) -> None:
        self._runtimes = runtimes
        # PullRows, PushRows, ReadRows (embedding tables: shard/rows.py).
        self._rows = RowService(runtimes)
        # Accept workers' offers of shared memory (the process's setting: transport/settings.py).
        self._shared_memory = shared_memory
        # Offered to workers that ask for a bulk channel (transport/bulk.py); None: not offered.
        self._bulk_port = bulk_port

    @translate_errors
    async def Exchange(
        self, request_iterator: AsyncIterator[frames.Frame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[shard_pb.ExchangeResponse | bytes]:
        # Requests arrive decoded by transport/frames.py (see `add_to_server`); parameters
        # leave pre-encoded.
        session = ExchangeSession(self._runtimes, self._shared_memory, require_member, bulk_port=self._bulk_port)
        try:
            yield await session.open(await anext(request_iterator, None))
            async for frame in request_iterator:
                async for response in session.handle(frame):
                    yield response
            session.end()
        finally:
            session.close()

    @translate_errors
    async def ReadParameters(
        self, request: shard_pb.ReadParametersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        runtime = find_runtime(self._runtimes, request.job_id, running=False)
        with contextlib.closing(runtime.params()) as messages:
            for params in messages:
                yield frames.read_parameters_response(params)

    @translate_errors
    async def GetShardInfo(
        self, request: shard_pb.GetShardInfoRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb.GetShardInfoResponse:
        return shard_info_to_proto(self._runtimes.last_runtime)

    @translate_errors
    async def PullRows(
        self, request: shard_pb.PullRowsRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb.PullRowsResponse:
        return await self._rows.pull(request)

    @translate_errors
    async def PushRows(
        self, request: shard_pb.PushRowsRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb.PushRowsResponse:
        return await self._rows.push(request)

    @translate_errors
    async def ReadRows(
        self, request: shard_pb.ReadRowsRequest, context: grpc.aio.ServicerContext
    ) -> shard_pb.ReadRowsResponse:
        return await self._rows.read(request)


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
        **{
            name: grpc.unary_unary_rpc_method_handler(
                getattr(servicer, name),
                request_deserializer=getattr(shard_pb, f"{name}Request").FromString,
                response_serializer=getattr(shard_pb, f"{name}Response").SerializeToString,
            )
            for name in ("PullRows", "PushRows", "ReadRows")
        },
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
