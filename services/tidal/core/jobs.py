"""Jobs as the coordinator runs them: lifecycle, placement and progress, as decisions.

Job lifecycle: PENDING (queued until enough members are idle) -> RUNNING (shards
assigned; workers assigned once every shard is ready) -> SUCCEEDED (final evaluation
reported) | FAILED | CANCELLED. The last three are terminal.

`JobManager` never sends anything: each event returns the commands the coordinator must
deliver to members, so the whole lifecycle is testable without sockets.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum

from tidal.core.errors import FailedPreconditionError, NotFoundError, ResourceExhaustedError
from tidal.core.membership import Member, Membership, Role
from tidal.core.shard_map import ShardMap
from tidal.core.spec import JobSpec


class JobState(Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass
class WorkerProgress:
    rank: int
    step: int = 0
    samples: int = 0
    loss: float = float("nan")
    step_time_s: float = 0.0
    finished: bool = False
    # Pushes made to each shard, known once the worker finished.
    pushes: int = 0


@dataclass
class ShardProgress:
    version: int = 0
    updates_applied: int = 0
    updates_rejected: int = 0
    staleness_sum: int = 0
    staleness_count: int = 0
    staleness_max: int = 0


@dataclass(frozen=True)
class EvalPoint:
    elapsed_s: float
    version: int
    val_loss: float
    val_accuracy: float


@dataclass
class Job:
    job_id: str
    spec: JobSpec
    shard_map: ShardMap
    created_at: float
    state: JobState = JobState.PENDING
    started_at: float = 0.0
    finished_at: float = 0.0
    message: str = ""
    membership_epoch: int = 0
    shard_ids: list[str] = field(default_factory=list)  # by shard index
    worker_ids: list[str] = field(default_factory=list)  # by rank
    shards_ready: set[str] = field(default_factory=set)
    workers: dict[str, WorkerProgress] = field(default_factory=dict)
    shards: dict[str, ShardProgress] = field(default_factory=dict)
    evals: list[EvalPoint] = field(default_factory=list)
    final_eval_by: str = ""
    final_eval_done: bool = False
    # Unix time of the last progress report from any member (0: none yet).
    last_progress_at: float = 0.0

    @property
    def members(self) -> list[str]:
        return [*self.shard_ids, *self.worker_ids]

    @property
    def version(self) -> int:
        return min((s.version for s in self.shards.values()), default=0)

    @property
    def samples(self) -> int:
        return sum(w.samples for w in self.workers.values())


# Commands the coordinator delivers over member sessions.
@dataclass(frozen=True)
class AssignShard:
    member_id: str
    job: Job
    shard_index: int


@dataclass(frozen=True)
class AssignWorker:
    member_id: str
    job: Job
    rank: int


@dataclass(frozen=True)
class Evaluate:
    member_id: str
    job_id: str
    final: bool


@dataclass(frozen=True)
class Release:
    member_id: str
    job_id: str
    state: JobState
    reason: str


Command = AssignShard | AssignWorker | Evaluate | Release


class JobManager:
    def __init__(self, membership: Membership, max_jobs: int = 10_000) -> None:
        self.membership = membership
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._max_jobs = max_jobs

    def submit(self, spec: JobSpec, shard_map: ShardMap, now: float) -> Job:
        if len(self._jobs) >= self._max_jobs:
            raise ResourceExhaustedError(f"jobs: the coordinator already holds {self._max_jobs} jobs")
        job_id = f"{spec.name}-{next(self._ids)}"
        job = Job(job_id, spec, shard_map, created_at=now)
        self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"job_id: no job {job_id!r}") from None

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def schedule(self, now: float) -> list[Command]:
        """Places pending jobs, oldest first, on idle members."""
        commands: list[Command] = []
        for job in self._jobs.values():
            if job.state is not JobState.PENDING:
                continue
            shards = self.membership.idle(Role.SHARD)[: job.spec.num_shards]
            workers = self.membership.idle(Role.WORKER)[: job.spec.num_workers]
            if len(shards) < job.spec.num_shards or len(workers) < job.spec.num_workers:
                break  # first come, first served: later jobs wait behind this one
            # Starting counts as progress, so a job that never reports any still trips the alert.
            job.state, job.started_at, job.last_progress_at = JobState.RUNNING, now, now
            job.membership_epoch += 1
            job.shard_ids = [m.member_id for m in shards]
            job.worker_ids = [m.member_id for m in workers]
            job.shards = {m: ShardProgress() for m in job.shard_ids}
            job.workers = {m: WorkerProgress(rank) for rank, m in enumerate(job.worker_ids)}
            for member_id in job.members:
                self.membership.assign(member_id, job.job_id)
            commands += [AssignShard(m, job, i) for i, m in enumerate(job.shard_ids)]
        return commands

    def _running(self, job_id: str, member_id: str, role: Role) -> Job:
        job = self.get(job_id)
        if member_id not in (job.shard_ids if role is Role.SHARD else job.worker_ids):
            raise FailedPreconditionError(f"job_id: {member_id} is not a {role.value} of job {job_id}")
        if job.state is not JobState.RUNNING:
            raise FailedPreconditionError(f"job_id: job {job_id} is {job.state.value}, not running")
        return job

    def shard_ready(self, member_id: str, job_id: str) -> list[Command]:
        job = self._running(job_id, member_id, Role.SHARD)
        if member_id in job.shards_ready:
            return []  # a repeated report must not assign the workers twice
        job.shards_ready.add(member_id)
        if job.shards_ready != set(job.shard_ids):
            return []
        return [AssignWorker(m, job, rank) for rank, m in enumerate(job.worker_ids)]

    def shard_progress(self, member_id: str, job_id: str, progress: ShardProgress, now: float) -> list[Command]:
        job = self._running(job_id, member_id, Role.SHARD)
        job.shards[member_id] = progress
        job.last_progress_at = now
        return self._finish_if_complete(job, now)

    def worker_progress(
        self, member_id: str, job_id: str, step: int, samples: int, loss: float, step_time_s: float, now: float
    ) -> None:
        job = self._running(job_id, member_id, Role.WORKER)
        job.last_progress_at = now
        w = job.workers[member_id]
        w.step, w.samples, w.loss, w.step_time_s = step, samples, loss, step_time_s

    def worker_finished(
        self, member_id: str, job_id: str, steps: int, samples: int, pushes: int | None = None
    ) -> list[Command]:
        job = self._running(job_id, member_id, Role.WORKER)
        w = job.workers[member_id]
        w.step, w.samples, w.finished = steps, samples, True
        w.pushes = steps if pushes is None else pushes
        if not all(p.finished for p in job.workers.values()) or job.final_eval_by:
            return []
        job.final_eval_by = job.worker_ids[0]
        return [Evaluate(job.final_eval_by, job_id, final=True)]

    def eval_report(
        self, member_id: str, job_id: str, version: int, loss: float, accuracy: float, final: bool, now: float
    ) -> list[Command]:
        job = self._running(job_id, member_id, Role.WORKER)
        job.evals.append(EvalPoint(now - job.started_at, version, loss, accuracy))
        job.final_eval_done = job.final_eval_done or final
        return self._finish_if_complete(job, now)

    def _finish_if_complete(self, job: Job, now: float) -> list[Command]:
        """Succeeds once the final evaluation is in and every shard has reported handling
        every push the workers made, so the job's final figures are complete."""
        if not job.final_eval_done:
            return []
        pushes = sum(w.pushes for w in job.workers.values())
        if any(s.updates_applied + s.updates_rejected < pushes for s in job.shards.values()):
            return []
        return self._end(job, JobState.SUCCEEDED, "", now)

    def fail(self, job_id: str, reason: str, now: float) -> list[Command]:
        job = self.get(job_id)
        return [] if job.state.terminal else self._end(job, JobState.FAILED, reason, now)

    def cancel(self, job_id: str, now: float) -> list[Command]:
        job = self.get(job_id)
        if job.state.terminal:
            raise FailedPreconditionError(f"job_id: job {job_id} is already {job.state.value}")
        return self._end(job, JobState.CANCELLED, "cancelled by request", now)

    def member_lost(self, member: Member, now: float) -> list[Command]:
        """A member failed or left. Its job fails (surviving it is the fault-tolerance work)."""
        if not member.job_id:
            return []
        job = self.get(member.job_id)
        reason = f"{member.role.value} {member.member_id} ({member.name}) was lost at version {job.version}"
        return self.fail(job.job_id, reason, now)

    def _end(self, job: Job, state: JobState, reason: str, now: float) -> list[Command]:
        job.state, job.message, job.finished_at = state, reason, now
        commands: list[Command] = []
        for member_id in job.members:
            member = self.membership.get(member_id)
            if member.live and member.job_id == job.job_id:
                self.membership.release(member_id)
                commands.append(Release(member_id, job.job_id, state, reason))
        return commands
