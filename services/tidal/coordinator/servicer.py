"""The Coordinator gRPC servicer: serde (coordinator/convert.py; the session's messages in
transport/session_convert.py) plus one call into `Control` per RPC; session messages become
domain events, the commands in a member's outbox become session messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc

from tidal.coordinator.control import Control
from tidal.coordinator.convert import ROLE_FROM_PROTO, job_to_proto, member_to_proto
from tidal.core import authz
from tidal.core.errors import InvalidArgumentError
from tidal.transport.errors import translate_errors
from tidal.transport.guard import current_principal, identity_for_registration, require, require_member
from tidal.transport.session_convert import command_to_proto, event_from_proto
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

log = logging.getLogger(__name__)


class CoordinatorServicer(coord_grpc.CoordinatorServicer):
    def __init__(self, control: Control) -> None:
        self._control = control

    @translate_errors
    async def Register(
        self, request: coord_pb.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> coord_pb.RegisterResponse:
        role = ROLE_FROM_PROTO.get(request.role)
        if role is None:
            raise InvalidArgumentError(f"role: must be ROLE_WORKER or ROLE_SHARD, got {request.role}")
        if (principal := current_principal()) is not None:
            require(authz.check_register(principal, common_pb.Role.Name(request.role), request.member_id))
        identity = identity_for_registration()
        checkpoints = [(c.job_id, c.shard_index) for c in request.checkpoints]
        shard_index = request.shard_index if request.HasField("shard_index") else None
        member, resumed = self._control.register(
            role, request.address, request.name, request.member_id, identity, checkpoints, shard_index
        )
        return coord_pb.RegisterResponse(
            member_id=member.member_id,
            heartbeat_interval_s=self._control.heartbeat_interval_s,
            heartbeat_timeout_s=self._control.heartbeat_timeout_s,
            resumed=resumed,
        )

    @translate_errors
    async def Session(
        self, request_iterator: AsyncIterator[coord_pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[coord_pb.SessionResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "open":
            raise InvalidArgumentError("open: the first message of a session must be 'open'")
        member_id = first.open.member_id
        require_member(member_id, "open.member_id")
        outbox = await self._control.open_session(member_id)

        async def read_member() -> None:
            try:
                async for msg in request_iterator:
                    if (event := event_from_proto(msg)) is not None:
                        await self._control.handle(member_id, event)
            except Exception:
                log.exception("session of %s: handling a message failed", member_id)
                raise
            finally:
                outbox.put_nowait(None)

        reader = asyncio.create_task(read_member())
        try:
            yield coord_pb.SessionResponse(welcome=coord_pb.SessionWelcome(member_id=member_id))
            while (command := await outbox.get()) is not None:
                yield command_to_proto(command)
        finally:
            try:
                reader.cancel()
                # A failure of `handle` surfaces here (already logged by the reader) and ends
                # the call; the session must still be closed, or its member stays live.
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AbortError):
                    await reader
            finally:
                await self._control.session_closed(member_id, outbox)

    @translate_errors
    async def SubmitJob(
        self, request: coord_pb.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> coord_pb.SubmitJobResponse:
        return coord_pb.SubmitJobResponse(job=job_to_proto(await self._control.submit(request.spec_json)))

    @translate_errors
    async def GetJob(
        self, request: coord_pb.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> coord_pb.GetJobResponse:
        return coord_pb.GetJobResponse(job=job_to_proto(self._control.job(request.job_id)))

    @translate_errors
    async def ListJobs(
        self, request: coord_pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> coord_pb.ListJobsResponse:
        return coord_pb.ListJobsResponse(jobs=[job_to_proto(j) for j in self._control.jobs.all()])

    @translate_errors
    async def CancelJob(
        self, request: coord_pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> coord_pb.CancelJobResponse:
        self._control.job(request.job_id)
        return coord_pb.CancelJobResponse(job=job_to_proto(await self._control.cancel(request.job_id)))

    @translate_errors
    async def WatchJob(
        self, request: coord_pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[coord_pb.WatchJobResponse]:
        self._control.job(request.job_id)
        async for job in self._control.watch(request.job_id):
            yield coord_pb.WatchJobResponse(job=job_to_proto(job))

    @translate_errors
    async def GetCluster(
        self, request: coord_pb.GetClusterRequest, context: grpc.aio.ServicerContext
    ) -> coord_pb.GetClusterResponse:
        now = time.monotonic()
        return coord_pb.GetClusterResponse(members=[member_to_proto(m, now) for m in self._control.membership.all()])
