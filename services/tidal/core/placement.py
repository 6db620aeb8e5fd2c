"""Placing a pending job: which idle shards take which shard index, and what a job that cannot
start yet says it waits for. `JobManager.schedule` (core/jobs.py) decides when to place."""

from __future__ import annotations

from tidal.core.job_records import Job
from tidal.core.membership import Member, Membership, Role


def pick_shards(idle: list[Member], count: int) -> list[Member | None]:
    """Idle shards for the indexes 0..count-1 (None where none fits): each index goes to the
    shard that asked for it with --index, else to one that asked for none, so a shard keeps
    its index, and its checkpoint folder holds that index's checkpoints, across jobs."""
    asked = {m.shard_index: m for m in idle if m.shard_index is not None}
    free = iter([m for m in idle if m.shard_index is None])
    return [asked.get(i) or next(free, None) for i in range(count)]


def waiting_for(
    membership: Membership, job: Job, blocked_by: Job | None, shards: list[Member | None], workers: int
) -> str:
    """The message of a pending job: the job queued first that cannot start either, or the
    members it lacks (`shards` as `pick_shards` found them, `workers` idle ones)."""
    if blocked_by is not None:
        return f"waiting for job {blocked_by.job_id}, queued first, to start"
    placed = sum(m is not None for m in shards)
    message = "waiting for " + lacking(membership, job.spec.num_shards, placed, job.spec.num_workers, workers)
    if placed < job.spec.num_shards and any(m is not None and m.shard_index is not None for m in shards):
        missing = ", ".join(str(i) for i, m in enumerate(shards) if m is None)
        message += f" (no idle shard can take index {missing}: the others asked for theirs with --index)"
    return message


def lacking(
    membership: Membership, shards_wanted: int, shards_idle: int, workers_wanted: int, workers_idle: int
) -> str:
    """What a job that cannot start lacks, e.g. "idle workers: 2 wanted, 1 idle of 3 live"."""
    out = []
    for role, wanted, idle in (
        (Role.SHARD, shards_wanted, shards_idle),
        (Role.WORKER, workers_wanted, workers_idle),
    ):
        if idle < wanted:
            live = sum(1 for m in membership.all() if m.role is role and m.live)
            out.append(f"{role.value}s: {wanted} wanted, {idle} idle of {live} registered")
    return "; ".join(out)
