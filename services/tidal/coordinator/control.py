"""The coordinator's state and its one loop, shared by the gRPC and REST front ends.

Owns the membership and the job manager, applies the domain events members report
(core/events.py; one handler each in coordinator/event_handlers.py), delivers the commands
the domain returns (core/commands.py) to each member's outbox, and wakes watchers. It speaks
no protobuf: the gRPC and REST edges convert (transport/session_convert.py for the session,
coordinator/convert.py for status).
With a state store, every change of jobs or membership is saved before the commands it
produced go out and before callers and watchers learn of it (progress reports are saved with
the next tick), and a restarted coordinator adopts the saved state: members that come back
under their ids within the resume grace keep their jobs. Saves are incremental
(coordinator/saving.py) and run in one writer thread (coordinator/writer.py), never on the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from tidal.coordinator.event_handlers import EventHandlers
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.saving import Saving
from tidal.coordinator.store import StateStore
from tidal.core.commands import (
    AssignShard,
    AssignWorker,
    ChangeMembership,
    Command,
    Evaluate,
    MoveShard,
    PrepareWorker,
)
from tidal.core.errors import FailedPreconditionError, NotFoundError, TidalError
from tidal.core.events import (
    Event,
    ShardProgressReport,
    WorkerProgressReport,
)
from tidal.core.job_records import Job, JobState
from tidal.core.jobs import JobManager
from tidal.core.membership import Member, Membership, MemberState, Role
from tidal.core.spec import parse_job_spec

log = logging.getLogger(__name__)

# A member's outbox: the commands its session stream sends, then None to end the stream.
Outbox = asyncio.Queue[Command | None]
# How often the loop checks heartbeats, places pending jobs and saves progress, in seconds.
TICK_S = 0.2
# After a restart, how long saved members have to come back, on top of the heartbeat
# timeout, before they are declared failed (they retry with a backoff of at most ~1 s).
RESUME_GRACE_S = 5.0
# Members that failed or left are forgotten this long after no job needs them, in seconds
# (kept a while so the cluster view still shows why a job lost them).
ENDED_MEMBER_RETENTION_S = 600.0
# Events that only report progress: saved with the next tick, not at once.
_SAVED_WITH_TICK = frozenset({WorkerProgressReport, ShardProgressReport})


class Control:
    def __init__(
        self,
        counters: CoordinatorCounters,
        heartbeat_interval_s: float = 1.0,
        heartbeat_timeout_s: float = 10.0,
        store: StateStore | None = None,
        ended_member_retention_s: float = ENDED_MEMBER_RETENTION_S,
    ) -> None:
        self.counters = counters
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.ended_member_retention_s = ended_member_retention_s
        self.membership = Membership()
        self.jobs = JobManager(self.membership)
        self._outboxes: dict[str, Outbox] = {}
        self._changed = asyncio.Condition()
        self._generation = 0
        # Shards that registered with checkpoints: member id -> [(job id, shard index)].
        self._checkpoints: dict[str, list[tuple[str, int]]] = {}
        self._store = store
        self._saving = Saving(store, self.membership, self.jobs, self.counters.state_save_seconds.observe)
        self._events = EventHandlers(self.jobs, self.counters, self._lose)
        # Set while the coordinator shuts down: sessions it closes itself are no member's failure.
        self._stopping = False
        if store is not None:
            self._saving.adopt(store, RESUME_GRACE_S, self.heartbeat_timeout_s)

    # --- members -------------------------------------------------------------------
    def register(
        self,
        role: Role,
        address: str,
        name: str,
        previous_id: str = "",
        identity: str = "",
        checkpoints: Sequence[tuple[str, int]] = (),
        shard_index: int | None = None,
    ) -> tuple[Member, bool]:
        """Registers a member; one that asks for its previous id and is still live resumes it
        (True), keeping its job. Returns the member and whether it resumed. A shard names the
        checkpoints (job id, shard index) it found at start-up: it may replace a lost shard;
        and it may ask for a fixed `shard_index` (--index)."""
        member, resumed = self._join(role, address, name, previous_id, identity, shard_index)
        self.shard_checkpoints(member.member_id, list(checkpoints))
        return member, resumed

    def _join(
        self, role: Role, address: str, name: str, previous_id: str, identity: str, shard_index: int | None
    ) -> tuple[Member, bool]:
        now = time.monotonic()
        if previous_id and (member := self.membership.rejoin(previous_id, role, address, now)) is not None:
            log.info("%s %s (%s) resumed its session", role.value, member.member_id, member.name)
            self._save()
            return member, True
        member = self.membership.register(role, address, name, now, identity, shard_index)
        index = "" if shard_index is None else f" for shard index {shard_index}"
        log.info("registered %s %s (%s) %s%s", role.value, member.member_id, member.name, address, index)
        if previous_id:
            log.info("%s was %s before; it is a new member now", member.member_id, previous_id)
        self._save()
        return member, False

    async def open_session(self, member_id: str) -> Outbox:
        member = self.membership.get(member_id)
        if not member.live:
            raise FailedPreconditionError(f"member_id: {member_id} is {member.state.value}; register again")
        if (stale := self._outboxes.get(member_id)) is not None:
            # The member came back before its old stream was seen to break: the new one wins.
            stale.put_nowait(None)
        outbox: Outbox = asyncio.Queue()
        self._outboxes[member_id] = outbox
        self.membership.seen(member_id, time.monotonic())
        await self._deliver(self._resync(member))
        await self._deliver(self._reattach())
        await self._place()
        return outbox

    def _resync(self, member: Member) -> list[Command]:
        """What a member resuming its job may have missed while it had no session: the job's
        current membership and, if it was asked for the final evaluation, that request."""
        if not member.job_id:
            return []
        job = self.jobs.get(member.job_id)
        if job.state is not JobState.RUNNING or member.member_id not in job.members:
            return []
        if job.preparing and member.member_id in job.worker_ids and member.member_id not in job.layout_from:
            # Its layout report may have been lost with the old session: a worker that
            # prepared the job already reports it again.
            return [PrepareWorker(member.member_id, job, job.workers[member.member_id].rank)]
        commands: list[Command] = [
            ChangeMembership(member.member_id, job.job_id, job.membership_epoch, tuple(job.worker_ids))
        ]
        if job.final_eval_by == member.member_id and not job.final_eval_done:
            commands.append(Evaluate(member.member_id, job.job_id, final=True))
        return commands

    async def session_closed(self, member_id: str, outbox: Outbox) -> None:
        if self._outboxes.get(member_id) is not outbox:
            return  # a newer session of the same member replaced this one
        del self._outboxes[member_id]
        member = self.membership.get(member_id)
        if member.live and not self._stopping:
            await self._lose(member, "its session closed", "session_closed")

    async def handle(self, member_id: str, event: Event) -> None:
        """Applies one event a member reported over its session."""
        member = self.membership.get(member_id)
        member.last_seen = time.monotonic()
        try:
            commands = await self._events.apply(event, member, time.time())
        except TidalError as exc:
            # Late reports for a job that already ended, or from a member the job dropped,
            # are expected; never drop the session for them.
            log.debug("ignored %s from %s: %s", type(event).__name__, member_id, exc)
            return
        if commands is None:
            return  # nothing changed that needs saving, telling or watching
        progress_only = type(event) in _SAVED_WITH_TICK
        if progress_only:
            self._saving.unsaved = True
        await self._deliver(commands)
        # Progress alone waits for the tick's save; any other change is saved before it returns.
        await (self._notify() if progress_only else self._bump())

    # --- shard restarts (docs/fault-tolerance.md) ----------------------------------------
    def shard_checkpoints(self, member_id: str, refs: list[tuple[str, int]]) -> None:
        """Notes the checkpoints a shard found at start-up: it may replace a lost shard."""
        if refs:
            self._checkpoints[member_id] = refs

    def _reattach(self) -> list[Command]:
        """Idle shards with a session and a checkpoint of a job that waits for its lost shard
        replace it (restoring the checkpoint)."""
        commands: list[Command] = []
        for member_id, refs in list(self._checkpoints.items()):
            member = self.membership.get(member_id)
            if not member.live:
                del self._checkpoints[member_id]
            elif member_id in self._outboxes:
                for job_id, shard_index in refs:
                    if found := self.jobs.shard_rejoin(member, job_id, shard_index):
                        log.warning("job %s: shard %d restarts from a checkpoint on %s", job_id, shard_index, member_id)
                        commands += found
                        break
        return commands

    # --- jobs ----------------------------------------------------------------------
    async def submit(self, spec_json: str) -> Job:
        # The spec is checked here (its form and bounds); its model and data only on the
        # workers, which build them with their own code (core/layout.py): the coordinator
        # never imports user code nor allocates a model.
        spec = parse_job_spec(spec_json)
        job = self.jobs.submit(spec, time.time())
        self._save()  # the caller is told the job exists: it must survive a restart
        log.info(
            "job %s submitted (%s, %d workers, %d shards)",
            job.job_id,
            spec.mode.value,
            spec.num_workers,
            spec.num_shards,
        )
        await self._place()
        await self._bump()
        return job

    async def cancel(self, job_id: str) -> Job:
        await self._deliver(self.jobs.cancel(job_id, time.time()))
        await self._bump()
        return self.jobs.get(job_id)

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """Yields a snapshot of the job now and after every change, until it is terminal
        (a copy: the caller may read it after the job changed again)."""
        job = self.jobs.get(job_id)
        while True:
            generation = self._generation
            snapshot = copy.deepcopy(job)
            yield snapshot
            # Decide on what was sent: the job may have ended while the caller read it, and
            # the terminal status must still be delivered.
            if snapshot.state.terminal:
                return
            await self._wait_for_change(generation, timeout_s=5.0)

    async def _wait_for_change(self, generation: int, timeout_s: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self._generation != generation), timeout_s)

    def job(self, job_id: str) -> Job:
        if not job_id:
            raise NotFoundError("job_id: must not be empty")
        return self.jobs.get(job_id)

    # --- the loop --------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            await self.tick()

    async def tick(self) -> None:
        """Fails silent members, places jobs, expires shard restarts, forgets ended members
        and saves the progress reported since the last tick."""
        for member in self.membership.overdue(time.monotonic(), self.heartbeat_timeout_s):
            self.counters.missed_heartbeats.labels(member.role.value).inc()
            await self._lose(member, f"no heartbeat for {self.heartbeat_timeout_s:.1f}s", "heartbeat_timeout")
        await self._place()
        await self._deliver(self.jobs.expire_restarts(time.time()))
        if self._forget_ended() or self._saving.due():
            self._save()

    def _forget_ended(self) -> list[str]:
        """Forgets members that failed or left once no job that is not over names them (a
        restarted coordinator needs only live members and those of running jobs)."""
        needed = {m for job in self.jobs.all() if not job.state.terminal for m in job.members}
        forgotten = self.membership.forget_ended(time.monotonic(), self.ended_member_retention_s, needed)
        for member_id in forgotten:
            self._checkpoints.pop(member_id, None)
        if forgotten:
            log.info("forgot %d members that ended: %s", len(forgotten), ", ".join(forgotten))
        return forgotten

    async def _lose(self, member: Member, why: str, reason: str, state: MemberState = MemberState.FAILED) -> None:
        """Declares `member` failed (or, for a goodbye, left); its job learns of it at once."""
        if state is MemberState.FAILED:
            log.warning("member %s (%s) failed: %s", member.member_id, member.name, why)
            self.counters.failures.labels(member.role.value, reason).inc()
        else:
            log.info("member %s (%s) left: %s", member.member_id, member.name, why)
            self.counters.members_left.labels(member.role.value).inc()
        self.membership.fail(member.member_id, state)
        await self._deliver(self.jobs.member_lost(member, time.time()))
        job = self.jobs.get(member.job_id) if member.job_id else None
        if job is not None and job.state is JobState.RUNNING and any(r.recovering for r in job.restarts):
            log.warning("job %s: %s", job.job_id, job.message)  # says which shard and what to do
        await self._deliver(self._reattach())
        self._save()
        outbox = self._outboxes.pop(member.member_id, None)
        if outbox is not None:
            outbox.put_nowait(None)  # ends the session stream
        await self._bump()

    def _save(self) -> None:
        self._saving.save()

    async def flush(self) -> None:
        """Returns once every save asked for so far is on disk."""
        await self._saving.flush()

    def begin_shutdown(self) -> None:
        """From now on a closing session does not fail its member: the coordinator itself is
        going away, and its members resume their sessions with the next one."""
        self._stopping = True

    def close(self) -> None:
        """Saves what is left and closes the store (blocks: for shutdown)."""
        self._saving.close()

    async def _place(self) -> None:
        """Places jobs; watchers also learn when what a pending job waits for changed."""
        commands, changed = self._schedule()
        await self._deliver(commands)
        if changed and not commands:
            await self._bump()

    def _schedule(self) -> tuple[list[Command], bool]:
        waiting = {job.job_id: job.message for job in self.jobs.all() if job.state is JobState.PENDING}
        # Only members with an open session can be told about a job they are placed in.
        commands = self.jobs.schedule(time.time(), reachable=self._outboxes.__contains__)
        changed = [
            self.jobs.get(job_id) for job_id, message in waiting.items() if self.jobs.get(job_id).message != message
        ]
        for job in changed:
            # Once per change of what it waits for, not every tick.
            if job.state is JobState.PENDING:
                log.info("job %s is pending, %s", job.job_id, job.message)
            elif job.state is JobState.FAILED:
                log.warning("job %s failed: %s", job.job_id, job.message)
        return commands, bool(changed)

    async def _deliver(self, commands: list[Command]) -> None:
        if commands:
            self._save()  # a restarted coordinator must know what its members were told
            await self.flush()
        for command in commands:
            outbox = self._outboxes.get(command.member_id)
            if outbox is None:
                log.warning("no session for %s; dropped %s", command.member_id, type(command).__name__)
                continue
            outbox.put_nowait(self._fixed(command))
        if commands:
            await self._bump()

    def _fixed(self, command: Command) -> Command:
        """The command as the member must be told it now: the job as it is (the outbox may
        hold it while the job changes again) and the shards' current addresses."""
        if isinstance(command, AssignWorker):
            job = copy.deepcopy(command.job)
            addresses = tuple(self.membership.get(m).address for m in job.shard_ids)
            return replace(command, job=job, shard_addresses=addresses)
        if isinstance(command, AssignShard | PrepareWorker):
            return replace(command, job=copy.deepcopy(command.job))
        if isinstance(command, MoveShard):
            return replace(command, shard_address=self.membership.get(command.shard_member_id).address)
        return command

    async def _bump(self) -> None:
        """Saves the state (on disk before callers and watchers learn of it) and wakes watchers."""
        self._save()
        await self.flush()
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()
