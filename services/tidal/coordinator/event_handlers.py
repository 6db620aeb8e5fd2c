"""What each domain event a member reports (core/events.py) does to the coordinator's jobs.

One handler per event type: it hands the event to the job manager and returns the commands
to deliver, or None when nothing more is needed (the handler saw to its own saving and
waking). `Control` owns the sessions, the outboxes and the saving; it calls `apply`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from tidal.coordinator.metrics import CoordinatorCounters
from tidal.core.commands import AssignShard, Command, MoveShard
from tidal.core.events import (
    EvalReport,
    Goodbye,
    Heartbeat,
    LayoutReport,
    ShardProgressReport,
    ShardReady,
    TaskFailed,
    WorkerFinished,
    WorkerProgressReport,
)
from tidal.core.jobs import JobManager
from tidal.core.membership import Member, MemberState

log = logging.getLogger(__name__)

# Declares a member lost: (member, why, failure reason for the counter, state to put it in).
LoseMember = Callable[[Member, str, str, MemberState], Awaitable[None]]


class EventHandlers:
    def __init__(self, jobs: JobManager, counters: CoordinatorCounters, lose: LoseMember) -> None:
        self.jobs = jobs
        self.counters = counters
        self._lose = lose

    @functools.singledispatchmethod
    async def apply(self, event: object, member: Member, now: float) -> list[Command] | None:
        raise TypeError(f"no handler for the event {type(event).__name__}")

    @apply.register
    async def _heartbeat(self, event: Heartbeat, member: Member, now: float) -> list[Command] | None:
        self.counters.heartbeats.labels(member.role.value).inc()
        return None

    @apply.register
    async def _goodbye(self, event: Goodbye, member: Member, now: float) -> list[Command] | None:
        await self._lose(member, f"it left ({event.reason or 'no reason given'})", "", MemberState.LEFT)
        return None

    @apply.register
    async def _worker_progress(self, event: WorkerProgressReport, member: Member, now: float) -> list[Command] | None:
        e = event
        self.jobs.worker_progress(
            member.member_id, e.job_id, e.step, e.samples, e.loss, e.step_time_s, now, pushes=e.pushes
        )
        return []

    @apply.register
    async def _shard_progress(self, event: ShardProgressReport, member: Member, now: float) -> list[Command] | None:
        return self.jobs.shard_progress(member.member_id, event.job_id, event.progress, now)

    @apply.register
    async def _shard_ready(self, event: ShardReady, member: Member, now: float) -> list[Command] | None:
        commands = self.jobs.shard_ready(member.member_id, event.job_id, event.version, event.checkpointing, now)
        if commands and isinstance(commands[0], MoveShard):
            self._restored(commands[0])
        return commands

    @apply.register
    async def _worker_finished(self, event: WorkerFinished, member: Member, now: float) -> list[Command] | None:
        return self.jobs.worker_finished(member.member_id, event.job_id, event.steps, event.samples, event.pushes)

    @apply.register
    async def _eval_report(self, event: EvalReport, member: Member, now: float) -> list[Command] | None:
        e = event
        return self.jobs.eval_report(
            member.member_id, e.job_id, e.version, e.val_loss, e.val_accuracy, e.final, now,
            e.metric, e.higher_is_better,
        )  # fmt: skip

    @apply.register
    async def _layout_report(self, event: LayoutReport, member: Member, now: float) -> list[Command] | None:
        commands = self.jobs.layout_report(member.member_id, event.job_id, event.layout, now)
        job = self.jobs.get(event.job_id)
        if job.shard_map is not None and any(isinstance(c, AssignShard) for c in commands):
            log.info(
                "job %s: the workers' model has %d parameters in %d tensors; shards assigned",
                job.job_id, job.shard_map.total_elements, len(job.shard_map.tensors),
            )  # fmt: skip
        return commands

    @apply.register
    async def _task_failed(self, event: TaskFailed, member: Member, now: float) -> list[Command] | None:
        reason = f"{member.member_id}: {event.message}"
        log.error("job %s failed: %s", event.job_id, reason)
        return self.jobs.task_failed(member.member_id, event.job_id, reason, now)

    def _restored(self, move: MoveShard) -> None:
        job = self.jobs.get(move.job_id)
        restart = next(r for r in reversed(job.restarts) if r.member_id == move.shard_member_id)
        self.counters.shard_restarts.inc()
        log.warning(
            "job %s: shard %d restored on %s at version %d (lost at version %d) after %.1fs",
            job.job_id,
            move.shard_index,
            move.shard_member_id,
            move.version,
            restart.lost_version,
            restart.ready_at - restart.lost_at,
        )
