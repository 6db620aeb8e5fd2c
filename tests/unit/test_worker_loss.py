"""Worker loss and elastic join in the domain: JobManager decisions, the shard's barrier
re-forming over the remaining workers, joiners counted from the next clock, epoch fencing,
and the data partitions that follow the live worker list. No sockets, no clock."""

from __future__ import annotations

from typing import Any

import pytest
import torch

# isort: split
from tests.unit.test_jobs import Cluster, finish_workers, make_cluster, start, submit
from tests.unit.test_shard_state import EPOCH, Reference, grad_like, make_state
from tidal.core.commands import AssignWorker, ChangeMembership, Evaluate, Release
from tidal.core.errors import FailedPreconditionError
from tidal.core.job_records import JobState, ShardProgress
from tidal.core.membership import Membership, MemberState, Role
from tidal.core.policy import ShardView, StaleSynchronousPolicy, SyncPolicy
from tidal.core.push_outcomes import PushOutcome
from tidal.core.spec import parse_job_spec
from tidal.worker.loop import data_slot


def spec(**fields: Any) -> Any:
    return parse_job_spec({"num_workers": 3, "num_shards": 2, "steps": 5, **fields})


def lose(cluster: Cluster, member_id: str, state: MemberState = MemberState.FAILED, now: float = 5.0) -> list[Any]:
    return cluster.jobs.member_lost(cluster.membership.fail(member_id, state), now)


def running_job(cluster: Cluster, **fields: Any) -> Any:
    job = submit(cluster, spec(**fields))
    start(cluster, job)
    return job


# --- JobManager: losing a worker ----------------------------------------------------------


def test_a_lost_worker_is_dropped_and_everyone_else_learns_the_new_epoch_at_once() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster)
    epoch = job.membership_epoch
    victim = job.worker_ids[1]
    commands = lose(cluster, victim)
    assert job.state is JobState.RUNNING
    assert job.worker_ids == [w for w in cluster.workers if w != victim]
    assert job.membership_epoch == epoch + 1
    assert job.workers[victim].lost == "failed"
    assert all(isinstance(c, ChangeMembership) for c in commands)
    assert sorted(c.member_id for c in commands) == sorted(job.members)
    assert {(c.membership_epoch, c.worker_ids) for c in commands} == {(epoch + 1, tuple(job.worker_ids))}


def test_a_goodbye_is_recorded_as_left_not_failed() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster)
    lose(cluster, job.worker_ids[0], MemberState.LEFT)
    assert [w.lost for w in job.workers.values()] == ["left", "", ""]
    assert job.state is JobState.RUNNING


def test_losing_workers_below_min_workers_fails_the_job_naming_member_and_version() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster, min_workers=2)
    cluster.jobs.shard_progress(job.shard_ids[0], job.job_id, ShardProgress(version=4), 3.0)
    cluster.jobs.shard_progress(job.shard_ids[1], job.job_id, ShardProgress(version=4), 3.0)
    first, second = job.worker_ids[:2]
    assert job.state is JobState.RUNNING and lose(cluster, first)
    commands = lose(cluster, second)
    assert job.state is JobState.FAILED
    assert second in job.message and "version 4" in job.message and "min_workers is 2" in job.message
    assert all(isinstance(c, Release) for c in commands)


def test_the_same_slot_lost_twice_in_a_row_keeps_the_job_going() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster)
    victim = job.worker_ids[2]
    lose(cluster, victim)
    # A restarted process registers as a new member, joins, and is killed again.
    (replacement,) = cluster.add(Role.WORKER, 1)
    cluster.jobs.schedule(6.0)
    assert replacement in job.worker_ids
    lose(cluster, replacement)
    assert job.state is JobState.RUNNING and len(job.worker_ids) == 2


def test_two_workers_lost_at_once_leave_one() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster)
    a, b, c = job.worker_ids
    lose(cluster, a)
    lose(cluster, c)
    assert job.worker_ids == [b] and job.state is JobState.RUNNING


def test_late_reports_and_failures_from_a_dropped_worker_change_nothing() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster)
    victim = job.worker_ids[0]
    lose(cluster, victim)
    with pytest.raises(FailedPreconditionError, match="no longer a member"):
        cluster.jobs.task_failed(victim, job.job_id, "shard 0: not a member", 6.0)
    with pytest.raises(FailedPreconditionError):
        cluster.jobs.worker_progress(victim, job.job_id, 9, 90, 0.5, 0.1, 6.0, pushes=9)
    assert job.state is JobState.RUNNING


def test_a_live_member_reporting_a_task_failure_still_fails_the_job() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster)
    cluster.jobs.task_failed(job.worker_ids[0], job.job_id, "boom", 6.0)
    assert job.state is JobState.FAILED and job.message == "boom"


def test_final_evaluation_starts_once_the_remaining_workers_finished() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster)
    a, b, c = job.worker_ids
    assert cluster.jobs.worker_finished(a, job.job_id, 5, 160) == []
    assert cluster.jobs.worker_finished(b, job.job_id, 5, 160) == []
    commands = lose(cluster, c)
    assert Evaluate(a, job.job_id, final=True) in commands


def test_final_evaluation_moves_to_another_worker_if_the_one_asked_is_lost() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster)
    finish_workers(cluster, job, 5)
    asked = job.final_eval_by
    commands = lose(cluster, asked)
    assert job.final_eval_by != asked and job.final_eval_by in job.worker_ids
    assert Evaluate(job.final_eval_by, job.job_id, final=True) in commands


def test_success_waits_for_every_acknowledged_push_of_a_lost_worker() -> None:
    cluster = make_cluster(shards=2, workers=2)
    job = running_job(cluster, num_workers=2)
    a, b = job.worker_ids
    # b had 3 pushes acknowledged by every shard when it died.
    cluster.jobs.worker_progress(b, job.job_id, 3, 96, 0.6, 0.1, 3.0, pushes=3)
    lose(cluster, b)
    cluster.jobs.worker_finished(a, job.job_id, 5, 160, pushes=5)
    cluster.jobs.eval_report(a, job.job_id, 5, 0.5, 0.7, True, 7.0)
    for shard in job.shard_ids:
        cluster.jobs.shard_progress(shard, job.job_id, ShardProgress(version=5, updates_applied=7), 7.0)
    assert job.state is JobState.RUNNING  # 7 < 5 + 3: one acknowledged push not accounted for
    for shard in job.shard_ids:
        cluster.jobs.shard_progress(shard, job.job_id, ShardProgress(version=5, updates_applied=8), 8.0)
    assert job.state is JobState.SUCCEEDED


# --- JobManager: elastic join ------------------------------------------------------------------


def test_an_idle_worker_refills_a_job_that_lost_one_and_gets_a_fresh_rank() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster)
    lose(cluster, job.worker_ids[1])
    epoch = job.membership_epoch
    (joiner,) = cluster.add(Role.WORKER, 1)
    commands = cluster.jobs.schedule(6.0)
    # Shards and the other workers learn first, then the joiner gets its assignment.
    assert isinstance(commands[-1], AssignWorker) and commands[-1].member_id == joiner
    assert commands[-1].rank == 3  # ranks are never reused
    changes = commands[:-1]
    assert sorted(c.member_id for c in changes) == sorted(m for m in job.members if m != joiner)
    assert all(isinstance(c, ChangeMembership) and c.membership_epoch == epoch + 1 for c in changes)
    assert job.worker_ids[-1] == joiner and cluster.state(joiner) is MemberState.ASSIGNED


def test_a_job_grows_to_max_workers_only_when_no_job_is_waiting() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster, max_workers=5)
    cluster.add(Role.WORKER, 2)
    waiting = submit(cluster, spec(name="next", num_workers=2))
    assert cluster.jobs.schedule(6.0) == []  # "next" needs shards; the idle workers wait for it
    assert len(job.worker_ids) == 3 and waiting.state is JobState.PENDING
    cluster.jobs.cancel(waiting.job_id, 7.0)
    commands = cluster.jobs.schedule(8.0)
    assert len(job.worker_ids) == 5
    assert [c.rank for c in commands if isinstance(c, AssignWorker)] == [3, 4]


def test_no_worker_joins_before_the_shards_are_ready_or_after_the_final_evaluation_began() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = submit(cluster, spec(max_workers=4))
    cluster.jobs.schedule(2.0)
    cluster.add(Role.WORKER, 1)
    assert cluster.jobs.schedule(3.0) == []
    for shard in job.shard_ids:
        cluster.jobs.shard_ready(shard, job.job_id)
    finish_workers(cluster, job, 5)
    assert cluster.jobs.schedule(4.0) == []


def test_membership_rejoin_keeps_a_live_member_and_refuses_a_failed_one() -> None:
    membership = Membership()
    member = membership.register(Role.WORKER, "", "w", 0.0)
    assert membership.rejoin(member.member_id, Role.WORKER, "", 5.0) is member
    assert member.last_seen == 5.0
    assert membership.rejoin(member.member_id, Role.SHARD, "h:1", 5.0) is None
    membership.fail(member.member_id)
    assert membership.rejoin(member.member_id, Role.WORKER, "", 6.0) is None
    assert membership.rejoin("worker-99-abc", Role.WORKER, "", 6.0) is None


# --- the shard's barrier ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "ssp"])
def test_a_worker_leaving_mid_step_completes_the_barrier_with_its_gradient_kept(mode: str) -> None:
    state, initial = make_state(mode=mode, workers=["w0", "w1", "w2"])
    ref = Reference(state, initial)
    g0, g2 = grad_like(state, 0), grad_like(state, 2)
    assert state.push("w0", "a", 0, EPOCH, g0).outcome is PushOutcome.BUFFERED
    assert state.push("w2", "c", 0, EPOCH, g2).outcome is PushOutcome.BUFFERED
    # w2 dies after its push was acknowledged; w1 never pushed and is lost too.
    assert state.set_membership(EPOCH + 1, ["w0"]) == (0, 0)
    ref.step((g0 + g2) / 2)
    assert state.version == 1 and state.counters.updates_applied == 2
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)


def test_a_joiner_holds_up_no_barrier_until_its_first_push_then_every_one_from_that_clock() -> None:
    state, _ = make_state(mode="sync", workers=["w0", "w1"])
    state.push("w0", "a", 0, EPOCH, grad_like(state, 0))
    state.set_membership(EPOCH + 1, ["w0", "w1", "w2"])
    assert state.push("w1", "b", 0, EPOCH, grad_like(state, 1)).outcome is PushOutcome.APPLIED
    # w2 is still building its model: clock 1 completes without it.
    state.push("w0", "a1", 1, EPOCH, grad_like(state, 0))
    assert state.push("w1", "b1", 1, EPOCH, grad_like(state, 1)).outcome is PushOutcome.APPLIED
    # Its first push, of clock 2, counts, and from then on the barrier waits for it.
    assert state.push("w2", "c2", 2, EPOCH + 1, grad_like(state, 2)).outcome is PushOutcome.BUFFERED
    state.push("w0", "a2", 2, EPOCH + 1, grad_like(state, 0))
    assert state.push("w1", "b2", 2, EPOCH + 1, grad_like(state, 1)).outcome is PushOutcome.APPLIED
    assert state.counters.updates_applied == 7
    state.push("w0", "a3", 3, EPOCH + 1, grad_like(state, 0))
    assert state.push("w1", "b3", 3, EPOCH + 1, grad_like(state, 1)).outcome is PushOutcome.BUFFERED
    assert state.push("w2", "c3", 3, EPOCH + 1, grad_like(state, 2)).outcome is PushOutcome.APPLIED
    assert state.version == 4


def test_a_joiner_whose_first_push_is_late_is_waited_for_from_the_current_clock() -> None:
    state, _ = make_state(mode="sync", workers=["w0", "w1"])
    state.set_membership(EPOCH + 1, ["w0", "w1", "w2"])
    state.push("w0", "a0", 0, EPOCH, grad_like(state, 0))
    state.push("w1", "b0", 0, EPOCH, grad_like(state, 1))
    # It trained on version 0, which was applied without it meanwhile.
    late = state.push("w2", "c0", 0, EPOCH + 1, grad_like(state, 2))
    assert late.outcome is PushOutcome.DROPPED_LATE and late.serve_version == 1
    state.push("w0", "a1", 1, EPOCH + 1, grad_like(state, 0))
    assert state.push("w1", "b1", 1, EPOCH + 1, grad_like(state, 1)).outcome is PushOutcome.BUFFERED
    assert state.push("w2", "c1", 1, EPOCH + 1, grad_like(state, 2)).outcome is PushOutcome.APPLIED


def test_shards_that_learn_of_a_joiner_a_version_apart_do_not_deadlock_it() -> None:
    """CI hang: shard 1 learned of the joiner one version before shard 0. Counting it from its
    next clock, shard 1 waited for it at version v while shard 0 was at v + 1 already, and the
    joiner, which starts on the newest version any shard serves, waited for shard 1 to reach
    v + 1. Counted from its first push, shard 1 completes v without it."""
    shards = [make_state(mode="sync", workers=["w0", "w1"])[0] for _ in range(2)]
    for step in range(2):
        for i, shard in enumerate(shards):
            shard.push("w0", f"a{step}:{i}", step, EPOCH, grad_like(shard, 0))
            shard.push("w1", f"b{step}:{i}", step, EPOCH, grad_like(shard, 1))
    shards[1].set_membership(EPOCH + 1, ["w0", "w1", "w2"])  # at version 2
    for i, shard in enumerate(shards):
        shard.push("w0", f"a2:{i}", 2, EPOCH, grad_like(shard, 0))
        shard.push("w1", f"b2:{i}", 2, EPOCH, grad_like(shard, 1))
    shards[0].set_membership(EPOCH + 1, ["w0", "w1", "w2"])  # at version 3
    for i, shard in enumerate(shards):
        shard.push("w0", f"a3:{i}", 3, EPOCH + 1, grad_like(shard, 0))
        shard.push("w1", f"b3:{i}", 3, EPOCH + 1, grad_like(shard, 1))
    assert [shard.version for shard in shards] == [4, 4]
    for i, shard in enumerate(shards):
        assert shard.push("w2", f"c4:{i}", 4, EPOCH + 1, grad_like(shard, 2)).outcome is PushOutcome.BUFFERED


def test_a_joiner_push_ahead_of_the_shard_epoch_is_refused_until_the_shard_learns_it() -> None:
    state, _ = make_state(workers=["w0", "w1"])
    with pytest.raises(FailedPreconditionError, match="ahead of this shard's epoch"):
        state.push("w2", "c", 0, EPOCH + 1, grad_like(state, 2))
    state.set_membership(EPOCH + 1, ["w0", "w1", "w2"])
    assert state.push("w2", "c", 0, EPOCH + 1, grad_like(state, 2)).outcome is PushOutcome.BUFFERED


def test_expected_members_per_clock() -> None:
    view = ShardView(4, frozenset({"a", "b", "c"}), {4: frozenset({"a", "b"})}, {"c": 5})
    assert view.expected(4) == {"a", "b"} and view.expected(5) == {"a", "b", "c"}
    assert SyncPolicy().complete(4, view)
    assert StaleSynchronousPolicy(2).complete(4, view)
    assert not SyncPolicy().complete(5, ShardView(5, view.members, {5: frozenset({"a", "b"})}, {"c": 5}))


# --- data partitions -------------------------------------------------------------------------


def test_data_slots_follow_the_live_worker_list() -> None:
    assert data_slot("w1", 1, 3, ()) == (1, 3)
    assert data_slot("w1", 1, 3, ("w0", "w1", "w2")) == (1, 3)
    # w0 died: the survivors split the data in two.
    assert [data_slot(w, r, 3, ("w1", "w2")) for w, r in (("w1", 1), ("w2", 2))] == [(0, 2), (1, 2)]
    # a joiner with rank 3 takes the last position.
    assert data_slot("w3", 3, 3, ("w1", "w2", "w3")) == (2, 3)


def test_success_needs_the_shards_per_worker_counts_when_the_dead_workers_report_is_stale() -> None:
    cluster = make_cluster(shards=2, workers=2)
    job = running_job(cluster, num_workers=2)
    a, b = job.worker_ids
    # b's last report said 1 push; it had 3 acknowledged when it died.
    cluster.jobs.worker_progress(b, job.job_id, 1, 32, 0.6, 0.1, 3.0, pushes=1)
    lose(cluster, b)
    cluster.jobs.worker_finished(a, job.job_id, 5, 160, pushes=5)
    cluster.jobs.eval_report(a, job.job_id, 5, 0.5, 0.7, True, 7.0)
    stale = ShardProgress(version=4, updates_applied=6, pushes_by_worker={a: 4, b: 3})
    for shard in job.shard_ids:
        cluster.jobs.shard_progress(shard, job.job_id, stale, 7.0)
    assert job.state is JobState.RUNNING  # a's fifth push is not in yet (6 >= 5 + 1 would pass)
    pending = ShardProgress(version=4, updates_applied=6, pushes_by_worker={a: 5, b: 3})
    for shard in job.shard_ids:
        cluster.jobs.shard_progress(shard, job.job_id, pending, 7.5)
    assert job.state is JobState.RUNNING  # handled, but 2 of them still wait in a buffer
    done = ShardProgress(version=5, updates_applied=8, pushes_by_worker={a: 5, b: 3})
    for shard in job.shard_ids:
        cluster.jobs.shard_progress(shard, job.job_id, done, 8.0)
    assert job.state is JobState.SUCCEEDED


def test_members_without_a_session_are_neither_placed_nor_joined() -> None:
    """A member that registered but has not opened its session yet cannot be told about a job:
    placing it anyway would make the barrier wait for a worker that never starts (CI saw a
    joiner's AssignWorker dropped and a sync job time out)."""
    cluster = make_cluster(shards=2, workers=3)
    job = running_job(cluster, max_workers=4)
    (joiner,) = cluster.add(Role.WORKER, 1)
    epoch = job.membership_epoch
    assert cluster.jobs.schedule(6.0, reachable=lambda member_id: member_id != joiner) == []
    assert joiner not in job.worker_ids and job.membership_epoch == epoch
    assert cluster.state(joiner) is MemberState.IDLE
    commands = cluster.jobs.schedule(7.0, reachable=lambda member_id: True)  # its session opened
    assert [c.member_id for c in commands if isinstance(c, AssignWorker)] == [joiner]

    waiting = submit(cluster, spec(name="next", num_workers=1, num_shards=1))
    (shard,) = cluster.add(Role.SHARD, 1)
    (worker,) = cluster.add(Role.WORKER, 1)
    assert cluster.jobs.schedule(8.0, reachable=lambda member_id: member_id != shard) == []
    assert waiting.state is JobState.PENDING
    cluster.jobs.schedule(9.0)
    assert waiting.state is JobState.RUNNING and waiting.shard_ids == [shard] and waiting.worker_ids == [worker]
