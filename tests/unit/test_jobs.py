"""Unit tests for tidal.core.jobs.JobManager and tidal.core.membership.Membership.

The whole job lifecycle is driven as events in, commands out: no sockets, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

# isort: split
from tidal.core.commands import AssignShard, AssignWorker, Evaluate, PrepareWorker, Release
from tidal.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from tidal.core.job_records import Job, JobState, ShardProgress
from tidal.core.jobs import JobManager
from tidal.core.layout import Layout
from tidal.core.membership import Membership, MemberState, Role
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.spec import JobSpec, parse_job_spec


@dataclass
class Cluster:
    membership: Membership
    jobs: JobManager
    shards: list[str]
    workers: list[str]

    def add(self, role: Role, count: int, now: float = 0.0) -> list[str]:
        ids = [
            self.membership.register(role, f"10.0.0.{i}:70{i}" if role is Role.SHARD else "", "", now).member_id
            for i in range(count)
        ]
        (self.shards if role is Role.SHARD else self.workers).extend(ids)
        return ids

    def state(self, member_id: str) -> MemberState:
        return self.membership.get(member_id).state


def make_cluster(shards: int = 2, workers: int = 2) -> Cluster:
    membership = Membership()
    cluster = Cluster(membership, JobManager(membership), [], [])
    cluster.add(Role.SHARD, shards)
    cluster.add(Role.WORKER, workers)
    return cluster


def make_spec(workers: int = 2, shards: int = 2, steps: int = 5, name: str = "job", mode: str = "sync") -> JobSpec:
    return parse_job_spec({"name": name, "num_workers": workers, "num_shards": shards, "steps": steps, "mode": mode})


# What every worker reports of the model it built (core/layout.py).
LAYOUT = Layout((TensorInfo("w", (32,), "float32"),), "0" * 32)


def submit(cluster: Cluster, spec: JobSpec | None = None, now: float = 1.0) -> Job:
    return cluster.jobs.submit(spec or make_spec(), now)


def prepare(cluster: Cluster, job: Job, layout: Layout = LAYOUT, now: float = 2.0) -> list[object]:
    """Every worker of `job` reports the layout of the model it built."""
    commands: list[object] = []
    for worker_id in list(job.worker_ids):
        commands += cluster.jobs.layout_report(worker_id, job.job_id, layout, now)
    return commands


def start(cluster: Cluster, job: Job, now: float = 2.0) -> None:
    """Schedules `job`, lets its workers report their layout and reports every shard ready."""
    cluster.jobs.schedule(now)
    assert job.state is JobState.RUNNING
    prepare(cluster, job, now=now)
    for shard_id in job.shard_ids:
        cluster.jobs.shard_ready(shard_id, job.job_id)


def finish_workers(cluster: Cluster, job: Job, steps: int) -> list[object]:
    commands: list[object] = []
    for worker_id in job.worker_ids:
        commands += cluster.jobs.worker_finished(worker_id, job.job_id, steps, steps * 32)
    return commands


def shards_done(cluster: Cluster, job: Job, handled: int, now: float = 5.0) -> list[object]:
    commands: list[object] = []
    for shard_id in job.shard_ids:
        progress = ShardProgress(version=handled, updates_applied=handled, updates_rejected=0)
        commands += cluster.jobs.shard_progress(shard_id, job.job_id, progress, now)
    return commands


# --- placement -------------------------------------------------------------------------


def test_submit_creates_a_pending_job_with_a_unique_id() -> None:
    cluster = make_cluster(0, 0)
    a, b = submit(cluster, make_spec(name="exp")), submit(cluster, make_spec(name="exp"))
    assert a.state is JobState.PENDING and b.state is JobState.PENDING
    assert a.job_id != b.job_id
    assert a.job_id.startswith("exp")
    assert cluster.jobs.get(a.job_id) is a
    assert cluster.jobs.all() == [a, b]
    assert a.created_at == 1.0


@pytest.mark.parametrize(("shards", "workers"), [(0, 0), (1, 2), (2, 1), (0, 5), (5, 0)])
def test_job_stays_pending_until_enough_idle_shards_and_workers(shards: int, workers: int) -> None:
    cluster = make_cluster(shards, workers)
    job = submit(cluster, make_spec(workers=2, shards=2))
    assert cluster.jobs.schedule(2.0) == []
    assert job.state is JobState.PENDING
    assert all(cluster.state(m) is MemberState.IDLE for m in [*cluster.shards, *cluster.workers])
    # The missing members arrive: now it is placed.
    cluster.add(Role.SHARD, max(0, 2 - shards))
    cluster.add(Role.WORKER, max(0, 2 - workers))
    assert len(cluster.jobs.schedule(3.0)) == 2
    assert job.state is JobState.RUNNING
    assert job.started_at == 3.0


def test_a_pending_job_says_what_it_waits_for() -> None:
    cluster = make_cluster(2, 1)
    job = submit(cluster, make_spec(workers=3, shards=5))
    behind = submit(cluster, make_spec(workers=1, shards=1))
    cluster.jobs.schedule(2.0)
    assert (
        job.message == "waiting for shards: 5 wanted, 2 idle of 2 registered; workers: 3 wanted, 1 idle of 1 registered"
    )
    assert behind.state is JobState.PENDING
    assert behind.message == f"waiting for job {job.job_id}, queued first, to start"
    # Enough shards now: only the workers are still missing.
    cluster.add(Role.SHARD, 3)
    cluster.jobs.schedule(3.0)
    assert job.message == "waiting for workers: 3 wanted, 1 idle of 1 registered"
    cluster.add(Role.WORKER, 2)
    cluster.jobs.schedule(4.0)
    assert job.state is JobState.RUNNING and job.message == ""


def test_a_job_not_placed_within_its_schedule_timeout_fails_saying_why() -> None:
    cluster = make_cluster(1, 0)
    spec = parse_job_spec({"num_workers": 2, "num_shards": 1, "schedule_timeout_s": 30})
    job = submit(cluster, spec, now=100.0)
    assert cluster.jobs.schedule(129.0) == []
    assert job.state is JobState.PENDING
    cluster.jobs.schedule(130.0)
    assert job.state is JobState.FAILED
    assert job.message == (
        "not scheduled within schedule_timeout_s=30s, waiting for workers: 2 wanted, 0 idle of 0 registered"
    )
    assert cluster.state(cluster.shards[0]) is MemberState.IDLE


def test_busy_members_do_not_count_as_idle() -> None:
    cluster = make_cluster(2, 2)
    first = submit(cluster)
    second = submit(cluster)
    cluster.jobs.schedule(2.0)
    assert first.state is JobState.RUNNING
    assert second.state is JobState.PENDING


def test_schedule_asks_the_workers_to_prepare_and_their_layout_plans_the_shards() -> None:
    cluster = make_cluster(shards=4, workers=3)
    job = submit(cluster, make_spec(workers=2, shards=3))
    epoch = cluster.membership.epoch
    prepares = cluster.jobs.schedule(2.0)
    # The coordinator builds no model: the workers build it and say what it holds.
    assert [(type(c), c.member_id, c.rank) for c in prepares] == [
        (PrepareWorker, w, r) for r, w in enumerate(job.worker_ids)
    ]
    assert job.shard_map is None and job.preparing and not job.accepts_workers
    assert cluster.jobs.layout_report(job.worker_ids[0], job.job_id, LAYOUT, 2.5) == []
    # A repeated report (after a session resumed) changes nothing.
    assert cluster.jobs.layout_report(job.worker_ids[0], job.job_id, LAYOUT, 2.6) == []
    commands = cluster.jobs.layout_report(job.worker_ids[1], job.job_id, LAYOUT, 2.7)
    assert job.shard_map == build_shard_map(LAYOUT.tensors, 3)
    assert all(isinstance(c, AssignShard) for c in commands)
    assert [c.shard_index for c in commands] == [0, 1, 2]
    assert [c.member_id for c in commands] == job.shard_ids
    assert all(c.job is job for c in commands)
    assert len(set(job.shard_ids)) == 3 and set(job.shard_ids) <= set(cluster.shards)
    assert len(set(job.worker_ids)) == 2 and set(job.worker_ids) <= set(cluster.workers)
    for member_id in job.members:
        member = cluster.membership.get(member_id)
        assert member.state is MemberState.ASSIGNED
        assert member.job_id == job.job_id
    # Members beyond what the job needs stay idle.
    spare = set(cluster.shards + cluster.workers) - set(job.members)
    assert len(spare) == 2
    assert all(cluster.state(m) is MemberState.IDLE for m in spare)
    assert cluster.membership.epoch > epoch
    assert job.membership_epoch == 1
    assert set(job.shards) == set(job.shard_ids)
    assert [job.workers[w].rank for w in job.worker_ids] == [0, 1]
    # Nothing more to place.
    assert cluster.jobs.schedule(3.0) == []


def test_workers_that_disagree_on_the_model_fail_the_job_naming_them() -> None:
    cluster = make_cluster(shards=1, workers=2)
    job = submit(cluster, make_spec(workers=2, shards=1))
    cluster.jobs.schedule(2.0)
    first, second = job.worker_ids
    cluster.jobs.layout_report(first, job.job_id, LAYOUT, 2.5)
    other = Layout((TensorInfo("w", (33,), "float32"),), LAYOUT.init_digest)
    commands = cluster.jobs.layout_report(second, job.job_id, other, 2.6)
    assert job.state is JobState.FAILED and job.shard_map is None
    assert second in job.message and first in job.message and "[33]" in job.message and "[32]" in job.message
    assert {type(c) for c in commands} == {Release}


def test_workers_with_different_initial_values_fail_the_job() -> None:
    cluster = make_cluster(shards=1, workers=2)
    job = submit(cluster, make_spec(workers=2, shards=1))
    cluster.jobs.schedule(2.0)
    cluster.jobs.layout_report(job.worker_ids[0], job.job_id, LAYOUT, 2.5)
    cluster.jobs.layout_report(job.worker_ids[1], job.job_id, Layout(LAYOUT.tensors, "1" * 32), 2.6)
    assert job.state is JobState.FAILED and "initial parameter values" in job.message


@pytest.mark.parametrize(
    ("tensors", "field"),
    [
        ((TensorInfo("w", (1 << 28, 2), "float32"),), "parameters"),
        (tuple(TensorInfo(f"t{i}", (1,), "float32") for i in range(4097)), "parameter tensors"),
        ((), "no parameters"),
        ((TensorInfo("w", (2,), "float32"), TensorInfo("w", (2,), "float32")), "repeated"),
    ],
)
def test_a_layout_past_the_limits_fails_the_job_before_any_shard_holds_it(
    tensors: tuple[TensorInfo, ...], field: str
) -> None:
    cluster = make_cluster(shards=1, workers=1)
    job = submit(cluster, make_spec(workers=1, shards=1))
    cluster.jobs.schedule(2.0)
    commands = cluster.jobs.layout_report(job.worker_ids[0], job.job_id, Layout(tensors, "0" * 32), 2.5)
    assert job.state is JobState.FAILED and field in job.message and job.worker_ids[0] in job.message
    assert not any(isinstance(c, AssignShard) for c in commands)


def test_a_worker_lost_while_preparing_leaves_the_others_to_plan_the_job() -> None:
    cluster = make_cluster(shards=1, workers=3)
    spec = parse_job_spec({"num_workers": 3, "min_workers": 2, "num_shards": 1, "steps": 5})
    job = submit(cluster, spec)
    cluster.jobs.schedule(2.0)
    a, b, c = job.worker_ids
    cluster.jobs.layout_report(a, job.job_id, LAYOUT, 2.5)
    cluster.jobs.layout_report(b, job.job_id, LAYOUT, 2.5)
    cluster.membership.fail(c, MemberState.FAILED)
    commands = cluster.jobs.member_lost(cluster.membership.get(c), 3.0)
    assert job.shard_map is not None
    assert [x.member_id for x in commands if isinstance(x, AssignShard)] == job.shard_ids


def test_workers_are_assigned_only_after_every_shard_is_ready() -> None:
    cluster = make_cluster(shards=3, workers=3)
    job = submit(cluster, make_spec(workers=3, shards=3))
    cluster.jobs.schedule(2.0)
    prepare(cluster, job)
    assert cluster.jobs.shard_ready(job.shard_ids[2], job.job_id) == []
    assert cluster.jobs.shard_ready(job.shard_ids[0], job.job_id) == []
    commands = cluster.jobs.shard_ready(job.shard_ids[1], job.job_id)
    assert all(isinstance(c, AssignWorker) for c in commands)
    assert [(c.member_id, c.rank) for c in commands] == [(w, r) for r, w in enumerate(job.worker_ids)]
    assert all(c.job is job for c in commands)


def test_repeated_shard_ready_does_not_reassign_workers() -> None:
    cluster = make_cluster()
    job = submit(cluster)
    cluster.jobs.schedule(2.0)
    cluster.jobs.shard_ready(job.shard_ids[0], job.job_id)
    assert len(cluster.jobs.shard_ready(job.shard_ids[1], job.job_id)) == 2
    assert cluster.jobs.shard_ready(job.shard_ids[1], job.job_id) == []


def test_shard_ready_from_a_worker_is_refused_and_does_not_block_the_job() -> None:
    cluster = make_cluster()
    job = submit(cluster)
    cluster.jobs.schedule(2.0)
    with pytest.raises(FailedPreconditionError, match="job_id"):
        cluster.jobs.shard_ready(job.worker_ids[0], job.job_id)
    cluster.jobs.shard_ready(job.shard_ids[0], job.job_id)
    assert len(cluster.jobs.shard_ready(job.shard_ids[1], job.job_id)) == 2


def test_worker_events_from_a_shard_are_refused() -> None:
    cluster = make_cluster()
    job = submit(cluster)
    start(cluster, job)
    shard = job.shard_ids[0]
    with pytest.raises(FailedPreconditionError, match="job_id"):
        cluster.jobs.worker_progress(shard, job.job_id, 1, 32, 0.5, 0.1, 3.0)
    with pytest.raises(FailedPreconditionError, match="job_id"):
        cluster.jobs.worker_finished(shard, job.job_id, 1, 32)
    with pytest.raises(FailedPreconditionError, match="job_id"):
        cluster.jobs.eval_report(shard, job.job_id, 1, 0.5, 0.5, True, 3.0)
    assert not job.final_eval_done
    assert shard not in job.workers


def test_shard_progress_from_a_worker_is_refused() -> None:
    cluster = make_cluster()
    job = submit(cluster)
    start(cluster, job)
    with pytest.raises(FailedPreconditionError, match="job_id"):
        cluster.jobs.shard_progress(job.worker_ids[0], job.job_id, ShardProgress(), 3.0)
    assert set(job.shards) == set(job.shard_ids)


# --- progress --------------------------------------------------------------------------


def test_progress_is_aggregated() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = submit(cluster, make_spec(workers=3))
    start(cluster, job)
    assert job.version == 0 and job.samples == 0
    for rank, worker_id in enumerate(job.worker_ids):
        cluster.jobs.worker_progress(worker_id, job.job_id, rank + 1, 32 * (rank + 1), 1.0 / (rank + 1), 0.01, 3.0)
    assert job.samples == 32 + 64 + 96
    progress = job.workers[job.worker_ids[2]]
    assert (progress.step, progress.samples, progress.loss, progress.step_time_s) == (3, 96, 1 / 3, 0.01)
    s0, s1 = job.shard_ids
    assert cluster.jobs.shard_progress(s0, job.job_id, ShardProgress(version=4, updates_applied=8), 3.0) == []
    assert cluster.jobs.shard_progress(s1, job.job_id, ShardProgress(version=3, updates_applied=6), 3.0) == []
    assert job.version == 3, "the job is as far as its slowest shard"
    assert job.state is JobState.RUNNING


def test_events_from_outsiders_or_for_unknown_jobs_are_refused() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = submit(cluster)
    start(cluster, job)
    outsider = next(w for w in cluster.workers if w not in job.members)
    with pytest.raises(FailedPreconditionError, match="job_id"):
        cluster.jobs.worker_progress(outsider, job.job_id, 1, 1, 1.0, 1.0, 3.0)
    with pytest.raises(FailedPreconditionError, match="job_id"):
        cluster.jobs.worker_finished(outsider, job.job_id, 1, 1)
    with pytest.raises(NotFoundError, match="job_id"):
        cluster.jobs.shard_ready(job.shard_ids[0], "no-such-job")
    with pytest.raises(NotFoundError, match="job_id"):
        cluster.jobs.get("no-such-job")


def test_events_for_a_pending_job_are_refused() -> None:
    cluster = make_cluster(shards=2, workers=2)
    running = submit(cluster)
    pending = submit(cluster)
    cluster.jobs.schedule(2.0)
    # A member of the running job cannot report on the pending one.
    with pytest.raises(FailedPreconditionError):
        cluster.jobs.shard_ready(running.shard_ids[0], pending.job_id)


# --- completion ------------------------------------------------------------------------


def test_final_evaluation_is_requested_once_from_rank_zero_after_all_workers_finish() -> None:
    cluster = make_cluster(shards=2, workers=3)
    job = submit(cluster, make_spec(workers=3))
    start(cluster, job)
    w0, w1, w2 = job.worker_ids
    assert cluster.jobs.worker_finished(w2, job.job_id, 5, 160) == []
    assert cluster.jobs.worker_finished(w0, job.job_id, 5, 160) == []
    commands = cluster.jobs.worker_finished(w1, job.job_id, 5, 160)
    assert commands == [Evaluate(w0, job.job_id, final=True)]
    assert job.final_eval_by == w0
    # A repeated report does not ask again.
    assert cluster.jobs.worker_finished(w1, job.job_id, 5, 160) == []
    assert job.state is JobState.RUNNING
    assert job.samples == 3 * 160


@pytest.mark.parametrize("order", ["eval-then-shards", "shards-then-eval"])
def test_success_needs_the_final_eval_and_every_push_handled(order: str) -> None:
    cluster = make_cluster(shards=2, workers=2)
    steps = 5
    job = submit(cluster, make_spec(steps=steps))
    start(cluster, job)
    finish_workers(cluster, job, steps)
    pushes = 2 * steps
    evaluator = job.final_eval_by
    # A periodic (non-final) evaluation never ends the job.
    assert cluster.jobs.eval_report(evaluator, job.job_id, 3, 0.9, 0.5, False, 4.0) == []
    if order == "eval-then-shards":
        assert cluster.jobs.eval_report(evaluator, job.job_id, steps, 0.5, 0.8, True, 5.0) == []
        assert job.state is JobState.RUNNING
        # One shard has handled everything, the other one push short.
        s0, s1 = job.shard_ids
        assert cluster.jobs.shard_progress(s0, job.job_id, ShardProgress(steps, pushes, 0), 6.0) == []
        short = ShardProgress(steps, pushes - 2, 1)
        assert cluster.jobs.shard_progress(s1, job.job_id, short, 6.0) == []
        assert job.state is JobState.RUNNING
        # Rejected pushes count as handled too.
        commands = cluster.jobs.shard_progress(s1, job.job_id, ShardProgress(steps, pushes - 2, 2), 7.0)
    else:
        assert shards_done(cluster, job, pushes) == []
        assert job.state is JobState.RUNNING
        commands = cluster.jobs.eval_report(evaluator, job.job_id, steps, 0.5, 0.8, True, 7.0)
    assert job.state is JobState.SUCCEEDED
    assert job.final_eval_done
    assert job.finished_at == 7.0
    assert job.message == ""
    assert sorted(c.member_id for c in commands) == sorted(job.members)
    assert all(isinstance(c, Release) and c.state is JobState.SUCCEEDED and c.job_id == job.job_id for c in commands)
    assert all(cluster.state(m) is MemberState.IDLE for m in job.members)
    assert all(cluster.membership.get(m).job_id == "" for m in job.members)
    assert [e.version for e in job.evals] == [3, steps]
    final_eval_at = 5.0 if order == "eval-then-shards" else 7.0
    assert job.evals[-1].elapsed_s == pytest.approx(final_eval_at - job.started_at)


def test_no_success_on_a_shard_report_older_than_the_final_evaluation() -> None:
    # A member's refused pushes count as handled: a report one version behind the parameters
    # the final evaluation read can already balance the counts (as a hostile member made it).
    cluster = make_cluster(shards=1, workers=2)
    steps = 5
    job = submit(cluster, make_spec(shards=1, steps=steps))
    start(cluster, job)
    finish_workers(cluster, job, steps)
    (shard,) = job.shard_ids
    w0, w1 = job.worker_ids
    # Each worker's last real push is not in it yet, but one forged push each is.
    behind = ShardProgress(steps - 1, 2 * steps - 2, 2, pushes_by_worker={w0: steps, w1: steps})
    assert cluster.jobs.shard_progress(shard, job.job_id, behind, 5.0) == []
    assert cluster.jobs.eval_report(job.final_eval_by, job.job_id, steps, 0.5, 0.8, True, 6.0) == []
    assert job.state is JobState.RUNNING
    caught_up = ShardProgress(steps, 2 * steps, 2, pushes_by_worker={w0: steps + 1, w1: steps + 1})
    assert cluster.jobs.shard_progress(shard, job.job_id, caught_up, 7.0) != []
    assert job.state is JobState.SUCCEEDED


def test_no_success_before_the_shards_catch_up_with_pushes_made() -> None:
    cluster = make_cluster()
    job = submit(cluster, make_spec(steps=4))
    start(cluster, job)
    finish_workers(cluster, job, 4)
    cluster.jobs.eval_report(job.final_eval_by, job.job_id, 4, 0.1, 1.0, True, 5.0)
    # Each shard saw 7 of the 8 pushes.
    assert shards_done(cluster, job, 7) == []
    assert job.state is JobState.RUNNING
    assert shards_done(cluster, job, 8)
    assert job.state is JobState.SUCCEEDED


def test_events_after_the_end_are_refused() -> None:
    cluster = make_cluster()
    job = submit(cluster, make_spec(steps=1))
    start(cluster, job)
    finish_workers(cluster, job, 1)
    shards_done(cluster, job, 2)
    cluster.jobs.eval_report(job.final_eval_by, job.job_id, 1, 0.1, 1.0, True, 5.0)
    assert job.state is JobState.SUCCEEDED
    with pytest.raises(FailedPreconditionError, match="succeeded"):
        cluster.jobs.shard_progress(job.shard_ids[0], job.job_id, ShardProgress(), 6.0)
    with pytest.raises(FailedPreconditionError, match="succeeded"):
        cluster.jobs.eval_report(job.worker_ids[0], job.job_id, 1, 0.1, 1.0, True, 6.0)
    assert cluster.jobs.fail(job.job_id, "late", 7.0) == []
    assert job.state is JobState.SUCCEEDED


# --- cancel and failure ----------------------------------------------------------------


def test_cancel_a_running_job_releases_its_members() -> None:
    cluster = make_cluster()
    job = submit(cluster)
    start(cluster, job)
    commands = cluster.jobs.cancel(job.job_id, 9.0)
    assert job.state is JobState.CANCELLED
    assert job.finished_at == 9.0
    assert sorted(c.member_id for c in commands) == sorted(job.members)
    assert all(isinstance(c, Release) and c.state is JobState.CANCELLED for c in commands)
    assert all(cluster.state(m) is MemberState.IDLE for m in job.members)


def test_cancel_a_pending_job_has_nobody_to_release() -> None:
    cluster = make_cluster(0, 0)
    job = submit(cluster)
    assert cluster.jobs.cancel(job.job_id, 3.0) == []
    assert job.state is JobState.CANCELLED
    # A cancelled job is never placed.
    cluster.add(Role.SHARD, 2)
    cluster.add(Role.WORKER, 2)
    assert cluster.jobs.schedule(4.0) == []


@pytest.mark.parametrize("end", ["cancel", "fail", "succeed"])
def test_cancelling_a_terminal_job_is_refused(end: str) -> None:
    cluster = make_cluster()
    job = submit(cluster, make_spec(steps=1))
    start(cluster, job)
    if end == "cancel":
        cluster.jobs.cancel(job.job_id, 3.0)
    elif end == "fail":
        cluster.jobs.fail(job.job_id, "boom", 3.0)
    else:
        finish_workers(cluster, job, 1)
        shards_done(cluster, job, 2)
        cluster.jobs.eval_report(job.final_eval_by, job.job_id, 1, 0.1, 1.0, True, 3.0)
    assert job.state.terminal
    state = job.state
    with pytest.raises(FailedPreconditionError, match=r"job_id.*already"):
        cluster.jobs.cancel(job.job_id, 4.0)
    assert job.state is state


def test_cancel_unknown_job_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        make_cluster().jobs.cancel("nope-1", 1.0)


@pytest.mark.parametrize("role", [Role.SHARD, Role.WORKER])
def test_member_lost_fails_its_job_naming_the_member(role: Role) -> None:
    # A worker loss fails the job only below min_workers (tests/unit/test_worker_loss.py).
    cluster = make_cluster()
    spec = parse_job_spec({"num_workers": 2, "num_shards": 2, "steps": 5, "min_workers": 2})
    job = submit(cluster, spec)
    start(cluster, job)
    cluster.jobs.shard_progress(job.shard_ids[0], job.job_id, ShardProgress(version=3), 3.0)
    cluster.jobs.shard_progress(job.shard_ids[1], job.job_id, ShardProgress(version=4), 3.0)
    victim_id = (job.shard_ids if role is Role.SHARD else job.worker_ids)[1]
    victim = cluster.membership.fail(victim_id)
    commands = cluster.jobs.member_lost(victim, 8.0)
    assert job.state is JobState.FAILED
    assert victim_id in job.message
    assert role.value in job.message
    assert "version 3" in job.message
    survivors = [m for m in job.members if m != victim_id]
    assert sorted(c.member_id for c in commands) == sorted(survivors)
    assert all(isinstance(c, Release) and c.state is JobState.FAILED and c.reason == job.message for c in commands)
    assert cluster.state(victim_id) is MemberState.FAILED
    assert all(cluster.state(m) is MemberState.IDLE for m in survivors)


def test_losing_an_idle_member_affects_no_job() -> None:
    cluster = make_cluster(shards=3, workers=2)
    job = submit(cluster)
    start(cluster, job)
    idle = cluster.membership.idle(Role.SHARD)[0]
    assert cluster.jobs.member_lost(cluster.membership.fail(idle.member_id), 3.0) == []
    assert job.state is JobState.RUNNING


def test_fail_is_idempotent() -> None:
    cluster = make_cluster()
    job = submit(cluster)
    start(cluster, job)
    assert len(cluster.jobs.fail(job.job_id, "first", 3.0)) == 4
    assert cluster.jobs.fail(job.job_id, "second", 4.0) == []
    assert job.message == "first"
    assert job.finished_at == 3.0


# --- queueing --------------------------------------------------------------------------


def test_jobs_are_placed_first_come_first_served() -> None:
    cluster = make_cluster(shards=2, workers=2)
    first = submit(cluster, make_spec(name="first"))
    second = submit(cluster, make_spec(name="second"))
    start(cluster, first)
    assert second.state is JobState.PENDING
    assert cluster.jobs.schedule(3.0) == []
    cluster.jobs.cancel(first.job_id, 4.0)
    commands = cluster.jobs.schedule(5.0)
    assert second.state is JobState.RUNNING
    assert {c.member_id for c in commands} == set(second.worker_ids)
    # The released members are reused.
    assert set(second.members) == set(first.members)


def test_a_small_job_does_not_overtake_a_big_one_waiting_ahead() -> None:
    cluster = make_cluster(shards=1, workers=1)
    big = submit(cluster, make_spec(workers=2, shards=1, name="big"))
    small = submit(cluster, make_spec(workers=1, shards=1, name="small"))
    assert cluster.jobs.schedule(2.0) == []
    assert big.state is JobState.PENDING
    assert small.state is JobState.PENDING
    cluster.add(Role.WORKER, 1)
    cluster.jobs.schedule(3.0)
    assert big.state is JobState.RUNNING
    assert small.state is JobState.PENDING


def test_several_jobs_fit_at_once() -> None:
    cluster = make_cluster(shards=2, workers=3)
    a = submit(cluster, make_spec(workers=2, shards=1))
    b = submit(cluster, make_spec(workers=1, shards=1))
    commands = cluster.jobs.schedule(2.0)
    assert a.state is JobState.RUNNING and b.state is JobState.RUNNING
    assert not set(a.members) & set(b.members)
    assert len(commands) == 3  # each worker prepares its job


def test_job_limit() -> None:
    membership = Membership()
    jobs = JobManager(membership, max_jobs=2)
    jobs.submit(make_spec(shards=1), 0.0)
    jobs.submit(make_spec(shards=1), 0.0)
    with pytest.raises(ResourceExhaustedError, match="jobs"):
        jobs.submit(make_spec(shards=1), 0.0)


# --- membership ------------------------------------------------------------------------


def test_register_validates_and_names_members() -> None:
    membership = Membership()
    with pytest.raises(InvalidArgumentError, match="address"):
        membership.register(Role.SHARD, "", "s", 0.0)
    assert membership.all() == []
    assert membership.epoch == 0
    worker = membership.register(Role.WORKER, "", "", 1.5)
    shard = membership.register(Role.SHARD, "host:1", "shard-a", 1.5)
    assert worker.member_id != shard.member_id
    assert worker.member_id.startswith("worker-") and shard.member_id.startswith("shard-")
    assert worker.name == worker.member_id  # a nameless member is called by its id
    assert shard.name == "shard-a"
    assert shard.address == "host:1"
    assert worker.state is MemberState.IDLE and worker.live
    assert worker.last_seen == 1.5
    assert membership.get(shard.member_id) is shard
    assert membership.idle(Role.SHARD) == [shard]
    assert membership.idle(Role.WORKER) == [worker]


def test_unknown_member_is_not_found() -> None:
    membership = Membership()
    with pytest.raises(NotFoundError, match="member_id"):
        membership.get("worker-9-abc")
    with pytest.raises(NotFoundError, match="member_id"):
        membership.seen("worker-9-abc", 1.0)


def test_member_limit_counts_live_members_only() -> None:
    membership = Membership(max_members=2)
    a = membership.register(Role.WORKER, "", "a", 0.0)
    membership.register(Role.SHARD, "h:1", "b", 0.0)
    with pytest.raises(ResourceExhaustedError, match="members"):
        membership.register(Role.WORKER, "", "c", 0.0)
    membership.fail(a.member_id, MemberState.LEFT)
    membership.register(Role.WORKER, "", "c", 0.0)
    with pytest.raises(ResourceExhaustedError):
        membership.register(Role.WORKER, "", "d", 0.0)


def test_overdue_members_by_heartbeat_timeout() -> None:
    membership = Membership()
    a = membership.register(Role.WORKER, "", "a", 0.0)
    b = membership.register(Role.SHARD, "h:1", "b", 0.0)
    c = membership.register(Role.WORKER, "", "c", 0.0)
    membership.seen(b.member_id, 8.0)
    membership.fail(c.member_id)
    assert membership.overdue(10.0, 10.0) == []  # exactly at the timeout is not overdue
    assert membership.overdue(10.5, 10.0) == [a]  # failed members are no longer watched
    assert set(m.member_id for m in membership.overdue(18.5, 10.0)) == {a.member_id, b.member_id}
    membership.seen(a.member_id, 18.0)
    assert membership.overdue(18.5, 10.0) == [b]


def test_epoch_bumps_on_every_change() -> None:
    membership = Membership()
    epochs = [membership.epoch]
    a = membership.register(Role.WORKER, "", "a", 0.0)
    epochs.append(membership.epoch)
    membership.assign(a.member_id, "job-1")
    assert membership.get(a.member_id).state is MemberState.ASSIGNED
    assert membership.idle(Role.WORKER) == []
    epochs.append(membership.epoch)
    membership.release(a.member_id)
    assert membership.get(a.member_id).state is MemberState.IDLE
    epochs.append(membership.epoch)
    membership.fail(a.member_id)
    epochs.append(membership.epoch)
    assert epochs == sorted(set(epochs)), f"every change bumps the epoch: {epochs}"
    # Heartbeats are not membership changes; releasing a dead member changes nothing.
    membership.seen(a.member_id, 5.0)
    membership.release(a.member_id)
    assert membership.epoch == epochs[-1]
    assert membership.get(a.member_id).state is MemberState.FAILED
    assert not membership.get(a.member_id).live


def test_a_job_ending_does_not_release_a_member_that_was_lost() -> None:
    cluster = make_cluster()
    job = submit(cluster)
    start(cluster, job)
    gone = job.worker_ids[0]
    cluster.membership.fail(gone, MemberState.LEFT)
    commands = cluster.jobs.cancel(job.job_id, 3.0)
    assert gone not in {c.member_id for c in commands}
    assert cluster.state(gone) is MemberState.LEFT
