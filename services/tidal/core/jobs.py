"""Jobs as the coordinator runs them: lifecycle, placement and progress, as decisions.

Job lifecycle: PENDING (queued until enough members are idle) -> RUNNING -> SUCCEEDED
(final evaluation reported) | FAILED | CANCELLED. The last three are terminal. A running job
first prepares: its workers build the model with their own code and report its layout
(core/layout.py); once all reported the same one, the shard map is planned from it and the
shards are assigned; the workers are assigned once every shard is ready, and the first of
them to reach a shard gives it its initial slice. The coordinator never builds a model.

While a job runs its worker set may change: a worker that fails or leaves is dropped (the
job fails only below `min_workers`), and idle workers join it (first to refill it to
`num_workers`, then, when no job is waiting, up to `max_workers`). Every change bumps the
job's membership epoch and tells its shards and workers at once. Ranks are never reused: a
joiner gets the next unused rank; data partitions follow the position in the live
worker list (see docs/fault-tolerance.md).

`JobManager` never sends anything: each event returns the commands (core/commands.py) the
coordinator must deliver to members, so the whole lifecycle is testable without sockets. The
records it keeps per job are in core/job_records.py; which idle shards take which index and
what a pending job waits for, in core/placement.py; a lost shard's recovery, in
core/shard_recovery.py; when a job has succeeded, in core/completion.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from tidal.core.commands import (
    AssignShard,
    AssignWorker,
    ChangeMembership,
    Command,
    Evaluate,
    PrepareWorker,
    Release,
)
from tidal.core.completion import complete
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from tidal.core.job_records import EvalPoint, Job, JobState, ShardProgress, WorkerProgress
from tidal.core.layout import Layout
from tidal.core.membership import Member, Membership, Role
from tidal.core.placement import pick_shards, waiting_for
from tidal.core.shard_map import build_shard_map
from tidal.core.shard_recovery import overdue_restart, rejoinable, shard_lost, shard_restored
from tidal.core.shard_restarts import not_restored
from tidal.core.spec import JobSpec


class JobManager:
    def __init__(self, membership: Membership, max_jobs: int = 10_000) -> None:
        self.membership = membership
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._max_jobs = max_jobs

    def submit(self, spec: JobSpec, now: float) -> Job:
        if len(self._jobs) >= self._max_jobs:
            raise ResourceExhaustedError(f"jobs: the coordinator already holds {self._max_jobs} jobs")
        job_id = f"{spec.name}-{next(self._ids)}"
        job = Job(job_id, spec, None, created_at=now)
        self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"job_id: no job {job_id!r}") from None

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def restore(self, jobs: list[Job]) -> None:
        """Adopts jobs saved by an earlier coordinator; new job ids continue after theirs."""
        for job in jobs:
            self._jobs[job.job_id] = job
        numbers = [int(j.job_id.rsplit("-", 1)[1]) for j in jobs if j.job_id.rsplit("-", 1)[-1].isdigit()]
        self._ids = itertools.count(max(numbers, default=0) + 1)

    def schedule(self, now: float, reachable: Callable[[str], bool] = lambda member_id: True) -> list[Command]:
        """Refills running jobs that lost workers, places pending jobs (oldest first) on idle
        members, then grows running jobs up to `max_workers` if no job is waiting.

        Only members for which `reachable(member_id)` holds are used: the coordinator passes
        "has an open session", because a command to a member that registered but has not opened
        its session yet would be dropped, and the job would wait for it forever."""

        def idle(role: Role) -> list[Member]:
            return [m for m in self.membership.idle(role) if reachable(m.member_id)]

        commands = self._grow(lambda job: job.spec.num_workers, idle)
        commands += self._place_pending(now, idle)
        if not any(job.state is JobState.PENDING for job in self._jobs.values()):
            commands += self._grow(lambda job: job.spec.worker_limit, idle)
        return commands

    def _grow(self, size: Callable[[Job], int], idle_members: Callable[[Role], list[Member]]) -> list[Command]:
        commands: list[Command] = []
        for job in self._jobs.values():
            while job.accepts_workers and len(job.worker_ids) < size(job):
                idle = idle_members(Role.WORKER)
                if not idle:
                    return commands
                commands += self._join(job, idle[0])
        return commands

    def _join(self, job: Job, member: Member) -> list[Command]:
        """`member` joins the running `job`: shards and workers learn first, then it is assigned."""
        rank = job.next_rank
        job.next_rank += 1
        job.worker_ids.append(member.member_id)
        job.workers[member.member_id] = WorkerProgress(rank)
        job.membership_epoch += 1
        self.membership.assign(member.member_id, job.job_id)
        others = [m for m in job.members if m != member.member_id]
        return [*self._membership_changed(job, others), AssignWorker(member.member_id, job, rank)]

    def _place_pending(self, now: float, idle: Callable[[Role], list[Member]]) -> list[Command]:
        commands: list[Command] = []
        blocked_by: Job | None = None
        for job in self._jobs.values():
            if job.state is not JobState.PENDING:
                continue
            picked = pick_shards(idle(Role.SHARD), job.spec.num_shards)
            shards = [m for m in picked if m is not None]
            workers = idle(Role.WORKER)[: job.spec.num_workers]
            if blocked_by is not None or len(shards) < job.spec.num_shards or len(workers) < job.spec.num_workers:
                # First come, first served: later jobs wait behind the first that cannot start.
                commands += self._wait(job, now, blocked_by, picked, len(workers))
                blocked_by = blocked_by or job
                continue
            # Starting counts as progress, so a job that never reports any still trips the alert.
            job.state, job.started_at, job.last_progress_at = JobState.RUNNING, now, now
            job.message = ""
            job.membership_epoch += 1
            job.shard_ids = [m.member_id for m in shards]
            job.worker_ids = [m.member_id for m in workers]
            job.shards = {m: ShardProgress() for m in job.shard_ids}
            job.workers = {m: WorkerProgress(rank) for rank, m in enumerate(job.worker_ids)}
            job.next_rank = len(job.worker_ids)
            for member_id in job.members:
                self.membership.assign(member_id, job.job_id)
            commands += [PrepareWorker(m, job, job.workers[m].rank) for m in job.worker_ids]
        return commands

    def _wait(
        self, job: Job, now: float, blocked_by: Job | None, shards: list[Member | None], workers: int
    ) -> list[Command]:
        """Says in `job.message` what the pending job waits for; past its `schedule_timeout_s`
        it fails with that message."""
        job.message = waiting_for(self.membership, job, blocked_by, shards, workers)
        timeout_s = job.spec.schedule_timeout_s
        if timeout_s is not None and now - job.created_at >= timeout_s:
            reason = f"not scheduled within schedule_timeout_s={timeout_s:g}s, {job.message}"
            return self._end(job, JobState.FAILED, reason, now)
        return []

    def layout_report(self, member_id: str, job_id: str, layout: Layout, now: float) -> list[Command]:
        """A worker built the job's model and reports its layout. Once every live worker
        reported the same one, the shard map is planned from it and the shards are assigned;
        a layout past the limits, or one that differs from another worker's, fails the job."""
        job = self._running(job_id, member_id, Role.WORKER)
        if not job.preparing or member_id in job.layout_from:
            return []  # a repeated report (after a session resumed)
        who = self._describe(member_id)
        try:
            layout.check()
        except InvalidArgumentError as exc:
            return self.fail(job_id, f"worker {who}: {exc}", now)
        if job.layout is None:
            job.layout = layout
        elif (difference := job.layout.difference(layout)) is not None:
            first = self._describe(sorted(job.layout_from)[0]) if job.layout_from else "another worker"
            return self.fail(job_id, f"the workers disagree on the model: worker {who} has {difference} ({first})", now)
        job.layout_from.add(member_id)
        job.last_progress_at = now
        return self._plan_if_prepared(job)

    def _plan_if_prepared(self, job: Job) -> list[Command]:
        if not job.preparing or job.layout is None or not set(job.worker_ids) <= job.layout_from:
            return []
        job.shard_map = build_shard_map(job.layout.tensors, job.spec.num_shards)
        return [AssignShard(m, job, i) for i, m in enumerate(job.shard_ids)]

    def _describe(self, member_id: str) -> str:
        member = self.membership.get(member_id)
        return f"{member_id} ({member.name})" if member.name else member_id

    def _running(self, job_id: str, member_id: str, role: Role) -> Job:
        job = self.get(job_id)
        if member_id not in (job.shard_ids if role is Role.SHARD else job.worker_ids):
            raise FailedPreconditionError(f"job_id: {member_id} is not a {role.value} of job {job_id}")
        if job.state is not JobState.RUNNING:
            raise FailedPreconditionError(f"job_id: job {job_id} is {job.state.value}, not running")
        return job

    def shard_ready(
        self, member_id: str, job_id: str, version: int = 0, checkpointing: bool = False, now: float = 0.0
    ) -> list[Command]:
        job = self._running(job_id, member_id, Role.SHARD)
        if member_id in job.shards_ready:
            return []  # a repeated report must not assign the workers twice
        index = job.shard_ids.index(member_id)
        if checkpointing:
            job.checkpointing.add(index)
        restart = job.pending_restart(index)
        if restart is not None and restart.member_id == member_id:
            return shard_restored(job, restart, version, now)
        job.shards_ready.add(member_id)
        if job.shards_ready != set(job.shard_ids):
            return []
        return [AssignWorker(m, job, job.workers[m].rank) for m in job.worker_ids]

    def shard_progress(self, member_id: str, job_id: str, progress: ShardProgress, now: float) -> list[Command]:
        job = self._running(job_id, member_id, Role.SHARD)
        job.shards[member_id] = progress
        for restart in job.restarts:
            if restart.member_id == member_id and not restart.recovering:
                # The shard reports what all restores of its index lost; this one lost the rest.
                earlier = sum(
                    r.updates_lost
                    for r in job.restarts
                    if r.shard_index == restart.shard_index and r.ready_at < restart.ready_at
                )
                restart.updates_lost = progress.updates_lost - earlier
                restart.versions_lost = progress.versions_lost
        job.last_progress_at = now
        return self._finish_if_complete(job, now)

    def worker_progress(
        self,
        member_id: str,
        job_id: str,
        step: int,
        samples: int,
        loss: float,
        step_time_s: float,
        now: float,
        pushes: int = 0,
    ) -> None:
        job = self._running(job_id, member_id, Role.WORKER)
        job.last_progress_at = now
        w = job.workers[member_id]
        w.step, w.samples, w.loss, w.step_time_s = step, samples, loss, step_time_s
        w.pushes = max(w.pushes, pushes)

    def worker_finished(
        self, member_id: str, job_id: str, steps: int, samples: int, pushes: int | None = None
    ) -> list[Command]:
        job = self._running(job_id, member_id, Role.WORKER)
        w = job.workers[member_id]
        w.step, w.samples, w.finished = steps, samples, True
        w.pushes = steps if pushes is None else pushes
        return self._evaluate_if_finished(job)

    def _evaluate_if_finished(self, job: Job) -> list[Command]:
        """Asks the first live worker for the final evaluation once every live worker finished,
        or again if the worker asked has been lost since."""
        if job.final_eval_done or not job.worker_ids:
            return []
        if job.final_eval_by in job.worker_ids:
            return []
        if not job.final_eval_by and not all(job.workers[m].finished for m in job.worker_ids):
            return []
        job.final_eval_by = job.worker_ids[0]
        return [Evaluate(job.final_eval_by, job.job_id, final=True)]

    def eval_report(
        self,
        member_id: str,
        job_id: str,
        version: int,
        loss: float,
        accuracy: float,
        final: bool,
        now: float,
        metric: str = "accuracy",
        higher_is_better: bool = True,
    ) -> list[Command]:
        job = self._running(job_id, member_id, Role.WORKER)
        job.evals.append(EvalPoint(now - job.started_at, version, loss, accuracy, metric, higher_is_better))
        job.final_eval_done = job.final_eval_done or final
        return self._finish_if_complete(job, now)

    def _finish_if_complete(self, job: Job, now: float) -> list[Command]:
        """Succeeds once the job's final figures are complete (core/completion.py)."""
        return self._end(job, JobState.SUCCEEDED, "", now) if complete(job) else []

    def fail(self, job_id: str, reason: str, now: float) -> list[Command]:
        job = self.get(job_id)
        return [] if job.state.terminal else self._end(job, JobState.FAILED, reason, now)

    def cancel(self, job_id: str, now: float) -> list[Command]:
        job = self.get(job_id)
        if job.state.terminal:
            raise FailedPreconditionError(f"job_id: job {job_id} is already {job.state.value}")
        return self._end(job, JobState.CANCELLED, "cancelled by request", now)

    def task_failed(self, member_id: str, job_id: str, reason: str, now: float) -> list[Command]:
        """A member of the job reports that its work failed: the job fails. Reports from
        members the job has already dropped are stale and change nothing."""
        job = self.get(job_id)
        if member_id not in job.members:
            raise FailedPreconditionError(f"job_id: {member_id} is no longer a member of job {job_id}")
        waiting = [r for r in job.restarts if r.recovering]
        if waiting and member_id in job.worker_ids:
            # A worker gives up on a lost shard after the same restart_timeout_s as the
            # coordinator, often first: the job's message still says which shard and what to do.
            reason = f"{not_restored(job, waiting[0])} ({reason})"
        return self.fail(job_id, reason, now)

    def member_lost(self, member: Member, now: float) -> list[Command]:
        """A member failed or left (its state says which). A lost worker is dropped from its
        job, which goes on while at least `min_workers` remain; a lost shard fails the job."""
        if not member.job_id:
            return []
        job = self.get(member.job_id)
        if job.state.terminal:
            return []
        if member.role is Role.SHARD:
            return self._shard_lost(job, member, now)
        return self._worker_lost(job, member, now)

    def _shard_lost(self, job: Job, member: Member, now: float) -> list[Command]:
        """A shard that writes checkpoints is waited for (see `shard_rejoin`); any other
        shard's loss fails the job."""
        if member.member_id not in job.shard_ids:
            return []
        reason = shard_lost(job, member, now)
        return [] if reason is None else self.fail(job.job_id, reason, now)

    def shard_rejoin(self, member: Member, job_id: str, shard_index: int) -> list[Command]:
        """An idle shard holding a checkpoint of (job, shard_index) replaces the lost shard if
        the job waits for one; otherwise nothing happens and it stays idle."""
        job = self._jobs.get(job_id)
        if job is None or (restart := rejoinable(job, member, shard_index)) is None:
            return []
        restart.member_id = member.member_id
        job.shard_ids[shard_index] = member.member_id
        self.membership.assign(member.member_id, job.job_id)
        return [AssignShard(member.member_id, job, shard_index, restore=True)]

    def expire_restarts(self, now: float) -> list[Command]:
        """Fails the jobs whose lost shard was not restored within the spec's restart timeout."""
        commands: list[Command] = []
        for job in self._jobs.values():
            if (restart := overdue_restart(job, now)) is not None:
                commands += self.fail(job.job_id, not_restored(job, restart), now)
        return commands

    def _worker_lost(self, job: Job, member: Member, now: float) -> list[Command]:
        if member.member_id not in job.worker_ids:
            return []
        job.worker_ids.remove(member.member_id)
        job.workers[member.member_id].lost = member.state.value
        job.membership_epoch += 1
        if len(job.worker_ids) < job.spec.min_workers:
            reason = (
                f"worker {member.member_id} ({member.name}) was lost ({member.state.value}) at version "
                f"{job.version}: {len(job.worker_ids)} workers remain, min_workers is {job.spec.min_workers}"
            )
            return self.fail(job.job_id, reason, now)
        return [
            *self._membership_changed(job, job.members),
            *self._plan_if_prepared(job),
            *self._evaluate_if_finished(job),
        ]

    def _membership_changed(self, job: Job, member_ids: list[str]) -> list[Command]:
        workers = tuple(job.worker_ids)
        return [ChangeMembership(m, job.job_id, job.membership_epoch, workers) for m in member_ids]

    def _end(self, job: Job, state: JobState, reason: str, now: float) -> list[Command]:
        job.state, job.message, job.finished_at = state, reason, now
        commands: list[Command] = []
        for member_id in job.members:
            member = self.membership.get(member_id)
            if member.live and member.job_id == job.job_id:
                self.membership.release(member_id)
                commands.append(Release(member_id, job.job_id, state, reason))
        return commands
