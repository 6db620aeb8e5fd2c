"""What a lost shard's job says: which shard it waits for or lost, and what to do about it.

Deployment-neutral text, because the coordinator cannot tell how the shard was run (a process,
a compose service, a pod). `core/shard_recovery.py` decides when a job waits for a shard and when it
fails; the words come from here."""

from __future__ import annotations

from tidal.core.job_records import Job, ShardRestart

# What to do about a lost shard: deployment-neutral, because the coordinator cannot tell how
# the shard was run. Docker's restart policies ignore `docker stop` and `docker kill`.
START_IT_AGAIN = (
    "start it again with the same checkpoint folder and it restores its newest checkpoint (a shard stopped by "
    "hand, docker stop or docker kill, is not restarted by Docker's restart policies: docker compose start "
    "SERVICE; on Kubernetes see kubectl get pods)"
)


def describe_lost_shard(restart: ShardRestart) -> str:
    """E.g. "shard 1 (member shard-1-2-a1b2c3, name shard-1, address 10.0.0.5:50052)"."""
    who = [f"member {restart.lost_member}"]
    if restart.lost_name and restart.lost_name != restart.lost_member:
        who.append(f"name {restart.lost_name}")
    if restart.lost_address:
        who.append(f"address {restart.lost_address}")
    return f"shard {restart.shard_index} ({', '.join(who)})"


def not_restored(job: Job, restart: ShardRestart) -> str:
    """The failure of a job whose lost shard did not come back in time, with what to do."""
    timeout = job.spec.checkpoint.restart_timeout_s
    return (
        f"{describe_lost_shard(restart)} was lost at version {restart.lost_version} and did not come back within "
        f"{timeout:g}s (checkpoint.restart_timeout_s); {START_IT_AGAIN}, then submit the job again (a larger "
        f"checkpoint.restart_timeout_s waits longer)"
    )
