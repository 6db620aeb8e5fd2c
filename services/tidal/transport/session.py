"""A member's side of the coordinator session: register, heartbeat, receive commands.

Shards and workers both use it; it knows nothing about either. Commands are handed to a
callback in arrival order; the callback must not block for long (start a task instead).

Members send domain events (core/events.py); the session turns them into its messages through
transport/session_convert.py. Everything sent goes through one queue and one writer task.
Callers can therefore be cancelled at any time: grpc.aio cancels the whole call when a
`write` is cancelled midway, which would look like a member failure to the coordinator.

The session outlives a coordinator restart or a network blip: when it breaks, the member
keeps working, registers again under its id with jittered backoff (at most
RECONNECT_MAX_DELAY_S between tries, for up to the reconnect timeout) and reopens it;
messages queued meanwhile go out on the new session. A member shutting down on purpose
says goodbye (`leave`) so the coordinator records it as LEFT, not FAILED.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import grpc

from tidal.core import commands, events
from tidal.core.errors import UnavailableError
from tidal.transport.server import create_channel
from tidal.transport.session_convert import command_from_proto, event_to_proto
from tidal.transport.tls import SecurityConfig
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

log = logging.getLogger(__name__)

# Takes each command the coordinator sends (core/commands.py), decoded here.
CommandHandler = Callable[[commands.Command], Awaitable[None]]
# Called after the session was reopened: True if the member kept its id (and its job),
# False if the coordinator made it a new member.
ResumeHandler = Callable[[bool], Awaitable[None]]
# Longest pause between two attempts to reach the coordinator, in seconds.
RECONNECT_MAX_DELAY_S = 1.0
# Status codes that mean "the coordinator is not reachable right now": worth retrying.
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class MemberSession:
    def __init__(
        self,
        coordinator_address: str,
        role: int,
        security: SecurityConfig,
        address: str = "",
        name: str = "",
        reconnect_timeout_s: float = 60.0,
        checkpoints: Callable[[], list[coord_pb.ShardCheckpoint]] | None = None,
        shard_index: int | None = None,
    ) -> None:
        self._channel = create_channel(coordinator_address, security)
        self._stub = coord_grpc.CoordinatorStub(self._channel)
        self._coordinator_address = coordinator_address
        self._request = coord_pb.RegisterRequest(role=role, address=address, name=name, shard_index=shard_index)
        # Shards: what their checkpoint folder holds, read afresh at every registration.
        self._checkpoints = checkpoints
        self._outgoing: asyncio.Queue[coord_pb.SessionRequest] = asyncio.Queue()
        self._call: grpc.aio.StreamStreamCall | None = None
        self.member_id = ""
        self.heartbeat_interval_s = 1.0
        self.reconnect_timeout_s = reconnect_timeout_s
        self.resumed = False
        self._leaving = False
        # Set while a session is open (the coordinator welcomed it), cleared when it breaks.
        self.opened = asyncio.Event()
        # A message whose write failed when a session broke: the next session sends it first.
        self._unsent: coord_pb.SessionRequest | None = None

    async def register(self, deadline_s: float) -> str:
        """Registers (under the previous id, if there was one), retrying with jittered
        exponential backoff until `deadline_s` passes; returns the member id."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        delay = 0.1
        self._request.member_id = self.member_id
        if self._checkpoints is not None:
            del self._request.checkpoints[:]
            self._request.checkpoints.extend(self._checkpoints())
        while True:
            try:
                reply = await self._stub.Register(self._request, timeout=5.0)
                self.member_id, self.heartbeat_interval_s = reply.member_id, reply.heartbeat_interval_s
                self.resumed = reply.resumed
                return self.member_id
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _RETRYABLE or loop.time() + delay > give_up:
                    raise UnavailableError(
                        f"coordinator {self._coordinator_address}: registration failed: "
                        f"{exc.code().name} {exc.details()}"
                    ) from None
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)

    async def run(self, on_command: CommandHandler, on_resumed: ResumeHandler | None = None) -> None:
        """Holds the session for the member's life, reopening it whenever it breaks (see the
        module docstring). Raises UnavailableError once the coordinator stayed unreachable
        for longer than the reconnect timeout."""
        while True:
            try:
                await self._hold(on_command)
            except UnavailableError as exc:
                if self._call is not None:
                    self._call.cancel()
                if self._leaving:
                    return  # the coordinator ended the session after our goodbye
                log.warning("%s; the member keeps working and reconnects", exc)
            previous = self.member_id
            await self.register(self.reconnect_timeout_s)
            if self.resumed:
                log.info("session resumed as %s", self.member_id)
            else:
                log.warning("the coordinator no longer knows %s: registered again as %s", previous, self.member_id)
                self._drain_outgoing()  # reports about the old id's job mean nothing now
            if on_resumed is not None:
                await on_resumed(self.resumed)

    async def _hold(self, on_command: CommandHandler) -> None:
        """One session: open, then hand over commands until it breaks (UnavailableError)."""
        self._call = self._stub.Session()
        writer: asyncio.Task[None] | None = None
        heartbeat: asyncio.Task[None] | None = None
        try:
            await self._call.write(coord_pb.SessionRequest(open=coord_pb.SessionOpen(member_id=self.member_id)))
            writer = asyncio.create_task(self._write_outgoing(self._call))
            heartbeat = asyncio.create_task(self._heartbeat())
            while True:
                msg = await self._call.read()
                if msg is grpc.aio.EOF:
                    raise UnavailableError(f"coordinator {self._coordinator_address}: session ended")
                command = command_from_proto(self.member_id, msg)
                if command is None:  # the welcome commands nothing: the session is open
                    self.opened.set()
                else:
                    await on_command(command)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            detail = f"{exc.code().name} {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            raise UnavailableError(f"coordinator {self._coordinator_address}: session lost: {detail}") from None
        finally:
            self.opened.clear()
            for task in (heartbeat, writer):
                if task is not None:
                    task.cancel()

    async def send(self, event: events.Event) -> None:
        """Queues a report for the coordinator; returns at once and is safe to cancel. While
        the session is down, reports wait for the next one."""
        self._outgoing.put_nowait(event_to_proto(event))

    def _drain_outgoing(self) -> None:
        self._unsent = None
        while not self._outgoing.empty():
            self._outgoing.get_nowait()

    async def leave(self, reason: str, timeout_s: float = 2.0) -> None:
        """Says goodbye (the coordinator records the member as LEFT, not FAILED) and waits,
        at most `timeout_s`, for the coordinator to end the session. Call it while `run` is
        still going: cancelling `run` cancels the call, and the goodbye could not be sent."""
        self._leaving = True
        call = self._call
        if call is None or call.done():
            return
        await self.send(events.Goodbye(reason))
        try:
            await asyncio.wait_for(call.code(), timeout_s)
        except TimeoutError:
            log.warning("the coordinator did not confirm the goodbye within %.1fs", timeout_s)

    async def _write_outgoing(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            request, self._unsent = self._unsent or await self._outgoing.get(), None
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                # The read loop sees the broken call and reports it; the next session resends.
                log.warning("session write failed: %s", exc)
                self._unsent = request
                return

    async def _heartbeat(self) -> None:
        seq = 0
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            seq += 1
            await self.send(events.Heartbeat(seq))

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        await self._channel.close()
