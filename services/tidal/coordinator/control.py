"""The coordinator's state and its one loop, shared by the gRPC and REST front ends.

Owns the membership and the job manager, turns session messages into domain events,
delivers the commands the domain returns to each member's outbox, and wakes watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from tidal.coordinator.convert import JOB_STATE_TO_PROTO, command_to_proto, job_to_proto
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.core import jobs
from tidal.core.errors import FailedPreconditionError, NotFoundError, TidalError
from tidal.core.membership import Member, Membership, MemberState, Role
from tidal.core.plan import job_dataset_info, job_model, job_shard_map
from tidal.core.spec import parse_job_spec
from tidal.v1 import coordinator_pb2 as coord_pb

log = logging.getLogger(__name__)

_TERMINAL_STATES = {JOB_STATE_TO_PROTO[state] for state in jobs.JobState if state.terminal}
# How often the loop checks heartbeats and places pending jobs, in seconds.
TICK_S = 0.2


class Control:
    def __init__(
        self, counters: CoordinatorCounters, heartbeat_interval_s: float = 1.0, heartbeat_timeout_s: float = 10.0
    ) -> None:
        self.counters = counters
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.membership = Membership()
        self.jobs = jobs.JobManager(self.membership)
        self._outboxes: dict[str, asyncio.Queue[coord_pb.SessionResponse | None]] = {}
        self._changed = asyncio.Condition()
        self._generation = 0

    # --- members -------------------------------------------------------------------
    def register(self, role: Role, address: str, name: str) -> Member:
        member = self.membership.register(role, address, name, time.monotonic())
        log.info("registered %s %s (%s) %s", role.value, member.member_id, member.name, address)
        return member

    async def open_session(self, member_id: str) -> asyncio.Queue[coord_pb.SessionResponse | None]:
        member = self.membership.get(member_id)
        if not member.live:
            raise FailedPreconditionError(f"member_id: {member_id} is {member.state.value}; register again")
        if member_id in self._outboxes:
            raise FailedPreconditionError(f"member_id: {member_id} already has an open session")
        outbox: asyncio.Queue[coord_pb.SessionResponse | None] = asyncio.Queue()
        self._outboxes[member_id] = outbox
        self.membership.seen(member_id, time.monotonic())
        await self._deliver(self.jobs.schedule(time.time()))
        return outbox

    async def session_closed(self, member_id: str) -> None:
        self._outboxes.pop(member_id, None)
        member = self.membership.get(member_id)
        if member.live:
            await self._lose(member, "its session closed", "session_closed")

    async def handle(self, member_id: str, msg: coord_pb.SessionRequest) -> None:
        """Applies one message from a member's session."""
        member = self.membership.get(member_id)
        member.last_seen = time.monotonic()
        kind = msg.WhichOneof("kind")
        now = time.time()
        commands: list[jobs.Command] = []
        try:
            if kind == "heartbeat":
                self.counters.heartbeats.labels(member.role.value).inc()
                return
            if kind == "worker_progress":
                p = msg.worker_progress
                self.jobs.worker_progress(member_id, p.job_id, p.step, p.samples, p.loss, p.step_time_s, now)
            elif kind == "shard_progress":
                p = msg.shard_progress
                progress = jobs.ShardProgress(
                    p.version,
                    p.updates_applied,
                    p.updates_rejected,
                    p.staleness_sum,
                    p.staleness_count,
                    p.staleness_max,
                )
                commands = self.jobs.shard_progress(member_id, p.job_id, progress, now)
            elif kind == "shard_ready":
                commands = self.jobs.shard_ready(member_id, msg.shard_ready.job_id)
            elif kind == "worker_finished":
                p = msg.worker_finished
                commands = self.jobs.worker_finished(member_id, p.job_id, p.steps, p.samples, p.pushes)
            elif kind == "eval_report":
                p = msg.eval_report
                commands = self.jobs.eval_report(
                    member_id, p.job_id, p.version, p.val_loss, p.val_accuracy, p.final, now
                )
            elif kind == "task_failed":
                reason = f"{member_id}: {msg.task_failed.message}"
                log.error("job %s failed: %s", msg.task_failed.job_id, reason)
                commands = self.jobs.fail(msg.task_failed.job_id, reason, now)
        except TidalError as exc:
            # Late messages for a job that already ended are expected; never drop the session for them.
            log.debug("ignored %s from %s: %s", kind, member_id, exc)
            return
        await self._deliver(commands)
        await self._bump()

    # --- jobs ----------------------------------------------------------------------
    async def submit(self, spec_json: str) -> jobs.Job:
        spec = parse_job_spec(spec_json)
        # Building the model validates model and dataset names and args before anything runs.
        shard_map = await asyncio.to_thread(lambda: job_shard_map(spec, job_model(spec, job_dataset_info(spec))))
        job = self.jobs.submit(spec, shard_map, time.time())
        log.info(
            "job %s submitted (%s, %d workers, %d shards)",
            job.job_id,
            spec.mode.value,
            spec.num_workers,
            spec.num_shards,
        )
        await self._deliver(self.jobs.schedule(time.time()))
        await self._bump()
        return job

    async def cancel(self, job_id: str) -> jobs.Job:
        await self._deliver(self.jobs.cancel(job_id, time.time()))
        await self._bump()
        return self.jobs.get(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[coord_pb.JobStatus]:
        """Yields the job's status now and after every change, until it is terminal."""
        job = self.jobs.get(job_id)
        while True:
            generation = self._generation
            status = job_to_proto(job)
            yield status
            # Decide on what was sent: the job may have ended while the caller read it, and
            # the terminal status must still be delivered.
            if status.state in _TERMINAL_STATES:
                return
            await self._wait_for_change(generation, timeout_s=5.0)

    async def _wait_for_change(self, generation: int, timeout_s: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self._generation != generation), timeout_s)

    def job(self, job_id: str) -> jobs.Job:
        if not job_id:
            raise NotFoundError("job_id: must not be empty")
        return self.jobs.get(job_id)

    # --- the loop --------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for member in self.membership.overdue(time.monotonic(), self.heartbeat_timeout_s):
                self.counters.missed_heartbeats.labels(member.role.value).inc()
                await self._lose(member, f"no heartbeat for {self.heartbeat_timeout_s:.1f}s", "heartbeat_timeout")
            await self._deliver(self.jobs.schedule(time.time()))

    async def _lose(self, member: Member, why: str, reason: str) -> None:
        log.warning("member %s (%s) failed: %s", member.member_id, member.name, why)
        self.counters.failures.labels(member.role.value, reason).inc()
        self.membership.fail(member.member_id, MemberState.FAILED)
        await self._deliver(self.jobs.member_lost(member, time.time()))
        outbox = self._outboxes.pop(member.member_id, None)
        if outbox is not None:
            outbox.put_nowait(None)  # ends the session stream
        await self._bump()

    async def _deliver(self, commands: list[jobs.Command]) -> None:
        for command in commands:
            outbox = self._outboxes.get(command.member_id)
            if outbox is None:
                log.warning("no session for %s; dropped %s", command.member_id, type(command).__name__)
                continue
            outbox.put_nowait(command_to_proto(command, self.membership))
        if commands:
            await self._bump()

    async def _bump(self) -> None:
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()
