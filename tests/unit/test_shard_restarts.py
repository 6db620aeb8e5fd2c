"""JobManager and shard loss, without sockets: a shard that writes checkpoints is waited for
and replaced by a restarted one; anything else still fails the job; the wait is bounded;
what a restore lost is reported per restart and counted in the job's accounting."""

from __future__ import annotations

import pytest

# isort: split
from tests.unit.test_jobs import Cluster, make_cluster, make_spec, start, submit
from tidal.core import snapshot
from tidal.core.commands import AssignShard, MoveShard, Release
from tidal.core.job_records import Job, JobState, ShardProgress
from tidal.core.membership import MemberState, Role


def checkpointing_job(mode: str = "sync") -> tuple[Cluster, Job]:
    cluster = make_cluster(shards=2, workers=2)
    job = submit(cluster, make_spec(mode=mode, steps=10))
    cluster.jobs.schedule(2.0)
    for shard_id in job.shard_ids:
        cluster.jobs.shard_ready(shard_id, job.job_id, version=0, checkpointing=True, now=2.0)
    return cluster, job


def lose(cluster: Cluster, member_id: str, now: float) -> list[object]:
    return cluster.jobs.member_lost(cluster.membership.fail(member_id), now)


def replacement(cluster: Cluster) -> str:
    return cluster.add(Role.SHARD, 1)[0]


@pytest.mark.parametrize("mode", ["sync", "async", "local_sgd"])
def test_a_lost_checkpointing_shard_is_waited_for_then_replaced(mode: str) -> None:
    cluster, job = checkpointing_job(mode)
    lost = job.shard_ids[1]
    cluster.jobs.shard_progress(lost, job.job_id, ShardProgress(version=7, updates_applied=14), 3.0)
    assert lose(cluster, lost, now=4.0) == []
    assert job.state is JobState.RUNNING
    (restart,) = job.restarts
    assert (restart.shard_index, restart.lost_member, restart.lost_version, restart.recovering) == (1, lost, 7, True)

    new = replacement(cluster)
    commands = cluster.jobs.shard_rejoin(cluster.membership.get(new), job.job_id, 1)
    assert commands == [AssignShard(new, job, 1, restore=True)]
    assert job.shard_ids[1] == new and cluster.state(new) is MemberState.ASSIGNED

    moved = cluster.jobs.shard_ready(new, job.job_id, version=5, checkpointing=True, now=6.5)
    assert moved == [MoveShard(w, job.job_id, 1, new, 5) for w in job.worker_ids]
    assert (restart.restored_version, restart.ready_at - restart.lost_at, restart.versions_lost) == (5, 2.5, 2)
    assert lost not in job.shards and job.shards[new].version == 5
    assert job.version == 0  # the other shard has not reported yet: the lowest counts


def test_a_shard_without_checkpoints_still_fails_the_job() -> None:
    cluster = make_cluster(shards=2, workers=2)
    job = submit(cluster)
    start(cluster, job)  # ShardReady without checkpointing
    commands = lose(cluster, job.shard_ids[0], now=4.0)
    assert job.state is JobState.FAILED and "wrote no checkpoints" in job.message
    assert all(isinstance(c, Release) for c in commands)


@pytest.mark.parametrize("mode", ["ssp", "auto"])
def test_clock_keyed_modes_cannot_restore_a_shard(mode: str) -> None:
    cluster, job = checkpointing_job(mode)
    lose(cluster, job.shard_ids[0], now=4.0)
    assert job.state is JobState.FAILED and f"mode {mode} cannot restore a shard" in job.message


def test_only_an_idle_shard_for_the_waiting_index_rejoins() -> None:
    cluster, job = checkpointing_job()
    new = replacement(cluster)
    member = cluster.membership.get(new)
    assert cluster.jobs.shard_rejoin(member, job.job_id, 0) == []  # nothing lost yet
    lose(cluster, job.shard_ids[0], now=4.0)
    assert cluster.jobs.shard_rejoin(member, job.job_id, 1) == []  # another index
    assert cluster.jobs.shard_rejoin(member, "no-such-job", 0) == []
    assert cluster.jobs.shard_rejoin(cluster.membership.get(job.worker_ids[0]), job.job_id, 0) == []
    assert len(cluster.jobs.shard_rejoin(member, job.job_id, 0)) == 1
    other = cluster.membership.get(replacement(cluster))
    assert cluster.jobs.shard_rejoin(other, job.job_id, 0) == []  # already being replaced


def test_a_replacement_lost_before_it_was_ready_is_waited_for_again() -> None:
    cluster, job = checkpointing_job()
    lose(cluster, job.shard_ids[0], now=4.0)
    first = replacement(cluster)
    cluster.jobs.shard_rejoin(cluster.membership.get(first), job.job_id, 0)
    lose(cluster, first, now=5.0)
    assert job.state is JobState.RUNNING and len(job.restarts) == 1 and job.restarts[0].member_id == ""
    second = replacement(cluster)
    assert cluster.jobs.shard_rejoin(cluster.membership.get(second), job.job_id, 0)


def test_the_wait_is_bounded_by_the_restart_timeout() -> None:
    cluster, job = checkpointing_job()
    cluster.membership.get(job.shard_ids[0]).name = "shard-0"  # --name (default: the host name)
    lose(cluster, job.shard_ids[0], now=4.0)
    timeout = job.spec.checkpoint.restart_timeout_s
    assert cluster.jobs.expire_restarts(4.0 + timeout - 1) == []
    commands = cluster.jobs.expire_restarts(4.0 + timeout + 1)
    assert job.state is JobState.FAILED
    lost = cluster.membership.get(job.shard_ids[0])
    assert job.message.startswith(
        f"shard 0 (member {lost.member_id}, name shard-0, address {lost.address}) was lost at version 0 "
        f"and did not come back within {timeout:g}s (checkpoint.restart_timeout_s); start it again"
    ), job.message
    assert "docker compose start SERVICE" in job.message and "submit the job again" in job.message
    assert {c.member_id for c in commands} == set(job.members) - {job.shard_ids[0]}


def test_a_running_job_says_which_shard_it_waits_for_until_it_is_back() -> None:
    cluster, job = checkpointing_job()
    lose(cluster, job.shard_ids[1], now=4.0)
    assert job.state is JobState.RUNNING
    assert job.message.startswith("waiting up to 120s for shard 1 (member ") and "docker stop" in job.message
    new = replacement(cluster)
    cluster.jobs.shard_rejoin(cluster.membership.get(new), job.job_id, 1)
    cluster.jobs.shard_ready(new, job.job_id, version=0, checkpointing=True, now=5.0)
    assert job.message == ""


def test_a_worker_giving_up_on_a_lost_shard_fails_the_job_with_what_to_do() -> None:
    """The workers wait restart_timeout_s too, and often report first."""
    cluster, job = checkpointing_job()
    lose(cluster, job.shard_ids[1], now=4.0)
    cluster.jobs.task_failed(job.worker_ids[0], job.job_id, "shard 1 at step 3: not back within 120s", now=125.0)
    assert job.state is JobState.FAILED
    assert job.message.startswith("shard 1 (member ") and "did not come back within 120s" in job.message
    assert job.message.endswith("(shard 1 at step 3: not back within 120s)")


def test_lost_updates_count_as_handled_and_are_reported_per_restart() -> None:
    cluster, job = checkpointing_job()
    lost = job.shard_ids[0]
    lose(cluster, lost, now=4.0)
    new = replacement(cluster)
    cluster.jobs.shard_rejoin(cluster.membership.get(new), job.job_id, 0)
    cluster.jobs.shard_ready(new, job.job_id, version=4, checkpointing=True, now=5.0)
    for worker_id in job.worker_ids:
        cluster.jobs.worker_finished(worker_id, job.job_id, 10, 320)
    # The evaluating worker read the lowest of the shards' versions: the restored one's 8.
    cluster.jobs.eval_report(job.worker_ids[0], job.job_id, 8, 0.5, 0.7, True, 6.0)
    done = ShardProgress(version=10, updates_applied=20)
    cluster.jobs.shard_progress(job.shard_ids[1], job.job_id, done, 6.0)
    # The restored shard holds 16 of the 20 pushes; the workers' reports say 4 were lost.
    short = ShardProgress(version=8, updates_applied=16)
    cluster.jobs.shard_progress(new, job.job_id, short, 6.0)
    assert job.state is JobState.RUNNING
    cluster.jobs.shard_progress(new, job.job_id, ShardProgress(8, 16, updates_lost=4, versions_lost=2), 6.1)
    assert job.state is JobState.SUCCEEDED
    assert (job.restarts[0].updates_lost, job.restarts[0].versions_lost) == (4, 2)


def test_restarts_survive_the_coordinators_saved_state() -> None:
    cluster, job = checkpointing_job()
    lose(cluster, job.shard_ids[0], now=4.0)
    back = snapshot.job_from_dict(snapshot.loads(snapshot.dumps(snapshot.job_to_dict(job)), "job"))
    assert back.checkpointing == {0, 1} and back.restarts == job.restarts
