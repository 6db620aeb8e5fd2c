"""Shards that ask for their index (--index / TIDAL_SHARD_INDEX): placed at it in every job,
so a shard's checkpoint folder holds that index's checkpoints; two live shards cannot ask for
the same one; a shard that asked for none fills the gaps. No sockets, no clock."""

from __future__ import annotations

import pytest

# isort: split
from tests.unit.test_jobs import Cluster, make_spec, submit
from tidal.core.commands import AssignShard
from tidal.core.errors import AlreadyExistsError, InvalidArgumentError
from tidal.core.jobs import JobManager
from tidal.core.membership import Membership, MemberState, Role
from tidal.core.snapshot import member_from_dict, member_to_dict


def shard(cluster: Cluster, name: str, index: int | None) -> str:
    member = cluster.membership.register(Role.SHARD, f"{name}:50052", name, 0.0, shard_index=index)
    cluster.shards.append(member.member_id)
    return member.member_id


def empty_cluster(workers: int = 2) -> Cluster:
    membership = Membership()
    cluster = Cluster(membership, JobManager(membership), [], [])
    cluster.add(Role.WORKER, workers)
    return cluster


def test_each_shard_takes_the_index_it_asked_for_whatever_the_registration_order() -> None:
    cluster = empty_cluster()
    one = shard(cluster, "shard-1", 1)
    zero = shard(cluster, "shard-0", 0)
    job = submit(cluster, make_spec(shards=2))
    cluster.jobs.schedule(1.0)
    assert job.shard_ids == [zero, one]


def test_a_shard_that_asked_for_no_index_fills_the_gap() -> None:
    cluster = empty_cluster()
    anyone = shard(cluster, "anyone", None)
    two = shard(cluster, "shard-2", 2)
    first = shard(cluster, "shard-0", 0)
    job = submit(cluster, make_spec(shards=3))
    cluster.jobs.schedule(1.0)
    assert job.shard_ids == [first, anyone, two]


def test_a_job_waits_for_the_shard_of_a_missing_index_and_says_so() -> None:
    cluster = empty_cluster()
    shard(cluster, "shard-0", 0)
    shard(cluster, "shard-5", 5)  # idle, but asked for an index this job does not have
    job = submit(cluster, make_spec(shards=2))
    cluster.jobs.schedule(1.0)
    assert job.message == (
        "waiting for shards: 2 wanted, 1 idle of 2 registered "
        "(no idle shard can take index 1: the others asked for theirs with --index)"
    )


def test_a_second_shard_asking_for_a_taken_index_is_refused_naming_the_flag() -> None:
    cluster = empty_cluster()
    first = shard(cluster, "shard-0", 0)
    with pytest.raises(AlreadyExistsError) as refused:
        shard(cluster, "other", 0)
    message = str(refused.value)
    assert message == (
        f"shard_index: shard index 0 is taken by the live shard {first} (shard-0, shard-0:50052); "
        "give each shard its own --index (TIDAL_SHARD_INDEX)"
    )
    # Once the holder failed (a restart), the index is free for its successor.
    cluster.membership.fail(first)
    shard(cluster, "shard-0", 0)


def test_only_a_shard_takes_an_index() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^shard_index: only a shard takes a shard index \(--index\)$"):
        Membership().register(Role.WORKER, "", "w", 0.0, shard_index=0)


def test_a_restarted_shard_replaces_only_the_index_it_asked_for() -> None:
    cluster = empty_cluster()
    zero, one = shard(cluster, "shard-0", 0), shard(cluster, "shard-1", 1)
    job = submit(cluster, make_spec(shards=2))
    cluster.jobs.schedule(1.0)
    for shard_id in job.shard_ids:
        cluster.jobs.shard_ready(shard_id, job.job_id, version=0, checkpointing=True, now=2.0)
    cluster.jobs.member_lost(cluster.membership.fail(one), 3.0)
    # A shard asking for index 0 holds (say, from before --index) a checkpoint of index 1: not used.
    cluster.membership.fail(zero)
    wrong = cluster.membership.get(shard(cluster, "shard-0", 0))
    assert cluster.jobs.shard_rejoin(wrong, job.job_id, 1) == []
    back = cluster.membership.get(shard(cluster, "shard-1", 1))
    assert cluster.jobs.shard_rejoin(back, job.job_id, 1) == [AssignShard(back.member_id, job, 1, restore=True)]


def test_the_asked_index_survives_a_coordinator_restart() -> None:
    member = Membership().register(Role.SHARD, "h:1", "shard-3", 0.0, shard_index=3)
    assert member_from_dict(member_to_dict(member), 5.0).shard_index == 3
    saved_before = {k: v for k, v in member_to_dict(member).items() if k != "shard_index"}
    restored = member_from_dict(saved_before, 5.0)
    assert restored.shard_index is None and restored.state is MemberState.IDLE
