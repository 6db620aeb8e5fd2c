"""When a job has succeeded: the final evaluation is in and every shard has accounted for every
push the workers made, so the job's final figures are complete. `JobManager` (core/jobs.py)
asks after every report that could complete a job.
"""

from __future__ import annotations

from tidal.core.job_records import Job, ShardProgress


def complete(job: Job) -> bool:
    """The final evaluation is in and every shard has reported handling every push the workers
    made (lost workers included: every acknowledged push), none of its shards still recovering."""
    if not job.final_eval_done:
        return False
    # Each shard's last report must be at least as new as the parameters the final
    # evaluation read. The counts below alone are not enough: a member's refused pushes
    # count as handled too, so a report one version old could already meet them.
    final_version = job.evals[-1].version if job.evals else 0
    if any(s.version < final_version for s in job.shards.values()):
        return False
    pushes = sum(w.pushes for w in job.workers.values())
    if any(s.updates_applied + s.updates_rejected + s.updates_lost < pushes for s in job.shards.values()):
        return False
    if any(r.recovering for r in job.restarts):
        return False
    return all(_accounted(job, s) for s in job.shards.values())


def _accounted(job: Job, shard: ShardProgress) -> bool:
    """Exact accounting, where the shard counts pushes per worker: it handled every push each
    finished worker saw acknowledged (less what a checkpoint restore lost), and every push it
    acknowledged is applied or refused, none still waiting in a barrier buffer. So a lost
    worker's acknowledged pushes are all in the parameters too, however stale its last
    progress report was."""
    by_worker = shard.pushes_by_worker
    if not by_worker:
        return True  # the shard does not count per worker
    missing = sum(max(0, w.pushes - by_worker.get(m, 0)) for m, w in job.workers.items() if w.finished)
    handled = shard.updates_applied + shard.updates_rejected
    return missing <= shard.updates_lost and handled >= sum(by_worker.values())
