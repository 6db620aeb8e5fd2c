"""A member's side of the coordinator session: register, heartbeat, receive commands.

Shards and workers both use it; it knows nothing about either. Commands are handed to a
callback in arrival order; the callback must not block for long (start a task instead).

Everything sent goes through one queue and one writer task. Callers can therefore be
cancelled at any time: grpc.aio cancels the whole call when a `write` is cancelled midway,
which would look like a member failure to the coordinator.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import grpc

from tidal.core.errors import UnavailableError
from tidal.transport.server import create_channel
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

log = logging.getLogger(__name__)

CommandHandler = Callable[[coord_pb.SessionResponse], Awaitable[None]]


class MemberSession:
    def __init__(
        self,
        coordinator_address: str,
        role: int,
        address: str = "",
        name: str = "",
        checkpoints: Callable[[], list[coord_pb.ShardCheckpoint]] | None = None,
    ) -> None:
        self._channel = create_channel(coordinator_address)
        self._stub = coord_grpc.CoordinatorStub(self._channel)
        self._coordinator_address = coordinator_address
        self._request = coord_pb.RegisterRequest(role=role, address=address, name=name)
        # Shards: what their checkpoint folder holds, read afresh at every registration.
        self._checkpoints = checkpoints
        self._outgoing: asyncio.Queue[coord_pb.SessionRequest] = asyncio.Queue()
        self._call: grpc.aio.StreamStreamCall | None = None
        self.member_id = ""
        self.heartbeat_interval_s = 1.0

    async def register(self, deadline_s: float) -> str:
        """Registers, retrying with jittered exponential backoff until `deadline_s` passes."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        delay = 0.1
        if self._checkpoints is not None:
            del self._request.checkpoints[:]
            self._request.checkpoints.extend(self._checkpoints())
        while True:
            try:
                reply = await self._stub.Register(self._request, timeout=5.0)
                self.member_id, self.heartbeat_interval_s = reply.member_id, reply.heartbeat_interval_s
                return self.member_id
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or loop.time() + delay > give_up:
                    raise UnavailableError(
                        f"coordinator {self._coordinator_address}: registration failed: "
                        f"{exc.code().name} {exc.details()}"
                    ) from None
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 2.0)

    async def run(self, on_command: CommandHandler) -> None:
        """Holds the session until the coordinator ends it; raises UnavailableError if it breaks."""
        self._call = self._stub.Session()
        await self._call.write(coord_pb.SessionRequest(open=coord_pb.SessionOpen(member_id=self.member_id)))
        writer = asyncio.create_task(self._write_outgoing(self._call))
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while True:
                msg = await self._call.read()
                if msg is grpc.aio.EOF:
                    raise UnavailableError(f"coordinator {self._coordinator_address}: session ended")
                await on_command(msg)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(
                f"coordinator {self._coordinator_address}: session lost: {exc.code().name} {exc.details()}"
            ) from None
        finally:
            heartbeat.cancel()
            writer.cancel()

    async def send(self, request: coord_pb.SessionRequest) -> None:
        """Queues a message for the coordinator; returns at once and is safe to cancel."""
        if self._call is None:
            raise UnavailableError("session: not open")
        self._outgoing.put_nowait(request)

    async def _write_outgoing(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            request = await self._outgoing.get()
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                # The read loop sees the broken call and reports it; nothing more to do here.
                log.warning("session write failed: %s", exc)
                return

    async def _heartbeat(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            seq += 1
            await self.send(coord_pb.SessionRequest(heartbeat=coord_pb.Heartbeat(seq=seq)))

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        await self._channel.close()
