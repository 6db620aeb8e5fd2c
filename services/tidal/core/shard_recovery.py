"""How a running job recovers a lost shard (docs/fault-tolerance.md), as decisions on its records.

A lost shard that wrote checkpoints, in a mode that can restore one, is waited for: an idle
shard holding its checkpoint takes its place, restores it, and the workers move to it. Past
the spec's restart timeout the job fails. `JobManager` (core/jobs.py) calls these, assigns
the members and delivers the commands; the words are core/shard_restarts.py's.
"""

from __future__ import annotations

from tidal.core.commands import Command, MoveShard
from tidal.core.job_records import Job, JobState, ShardProgress, ShardRestart
from tidal.core.membership import Member, MemberState, Role
from tidal.core.shard_restarts import START_IT_AGAIN, describe_lost_shard
from tidal.core.spec import Mode

# Modes whose shards can be restored: their barriers key on the version a gradient was computed
# from, which workers re-pull from the restored shard. SSP and auto key on the workers' clocks,
# which a restored shard cannot replay.
RESTARTABLE_MODES = frozenset({Mode.SYNC, Mode.ASYNC, Mode.LOCAL_SGD})


def shard_lost(job: Job, member: Member, now: float) -> str | None:
    """Records the loss of `member`, one of the job's shards. Returns why the job fails (the
    shard wrote no checkpoints, or the mode cannot restore one), or None: the job waits for a
    replacement (see `rejoinable`) and its message says so."""
    index = job.shard_ids.index(member.member_id)
    reason = f"shard {index} {member.member_id} ({member.name}) was lost at version {job.version}"
    if index not in job.checkpointing:
        return f"{reason}; it wrote no checkpoints (start shards with --checkpoint-dir)"
    if job.spec.mode not in RESTARTABLE_MODES:
        return f"{reason}; mode {job.spec.mode.value} cannot restore a shard"
    job.shards_ready.discard(member.member_id)
    restart = job.pending_restart(index)
    if restart is not None:
        restart.member_id = ""  # the replacement itself was lost: wait for another
    else:
        lost_version = job.shards[member.member_id].version if member.member_id in job.shards else 0
        restart = ShardRestart(index, member.member_id, now, lost_version)
        restart.lost_name, restart.lost_address = member.name, member.address
        job.restarts.append(restart)
    timeout = job.spec.checkpoint.restart_timeout_s
    job.message = f"waiting up to {timeout:g}s for {describe_lost_shard(restart)} to come back; {START_IT_AGAIN}"
    return None


def rejoinable(job: Job, member: Member, shard_index: int) -> ShardRestart | None:
    """The restart that the idle shard `member`, holding a checkpoint of (job, shard_index),
    may take over: the job runs and waits for a replacement at that index, and the shard did
    not ask for another index (--index). None otherwise."""
    if job.state is not JobState.RUNNING or member.state is not MemberState.IDLE:
        return None
    if member.role is not Role.SHARD or not 0 <= shard_index < len(job.shard_ids):
        return None
    if member.shard_index is not None and member.shard_index != shard_index:
        return None  # it asked for another index (--index)
    restart = job.pending_restart(shard_index)
    if restart is None or restart.member_id:
        return None
    return restart


def shard_restored(job: Job, restart: ShardRestart, version: int, now: float) -> list[Command]:
    """The replacement restored its checkpoint: it takes the lost shard's place and the
    workers learn where to reconnect."""
    restart.restored_version, restart.ready_at = version, now
    job.shards_ready.add(restart.member_id)
    lost = job.shards.pop(restart.lost_member, ShardProgress())
    job.shards[restart.member_id] = ShardProgress(version=version, checkpoint_version=version)
    # Workers report exactly what was lost once they reconnect; until then, the last report.
    restart.versions_lost = max(0, lost.version - version)
    if not any(r.recovering for r in job.restarts):
        job.message = ""  # no longer waiting for a shard
    return [MoveShard(w, job.job_id, restart.shard_index, restart.member_id, version) for w in job.worker_ids]


def overdue_restart(job: Job, now: float) -> ShardRestart | None:
    """The first lost shard of a running job not restored within the spec's restart timeout."""
    if job.state is not JobState.RUNNING:
        return None
    for r in job.restarts:
        timeout = job.spec.checkpoint.restart_timeout_s
        if r.recovering and now - r.lost_at > timeout:
            return r
    return None
