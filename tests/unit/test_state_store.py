"""The coordinator's saves: off the event loop in one writer thread, coalesced while a write
is in flight, incremental (only changed rows), retried after a failure, and ended members
forgotten after their retention, in memory and on disk."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

# isort: split
from tests.unit.test_coordinator_state import busy_cluster
from tidal.coordinator.control import Control
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.store import FILE_NAME, Changes, StateStore
from tidal.core.events import Goodbye
from tidal.core.job_records import JobState
from tidal.core.membership import Membership, MemberState, Role
from tidal.core.spec import parse_job_spec

SPEC = {"name": "saved", "mode": "sync", "num_workers": 1, "num_shards": 1, "steps": 5}
GOODBYE = Goodbye(reason="done")


def control(state_dir: Path, trace: Callable[[str], None] | None = None, retention_s: float = 600.0) -> Control:
    store = StateStore(state_dir, trace=trace)
    counters = CoordinatorCounters(CollectorRegistry())
    # A heartbeat timeout no test reaches: ticks here never fail a member for silence.
    return Control(counters, heartbeat_timeout_s=3600.0, store=store, ended_member_retention_s=retention_s)


def saved_member_ids(state_dir: Path) -> set[str]:
    store = StateStore(state_dir)
    try:
        return {m.member_id for m in store.load(now=0.0).members}
    finally:
        store.close()


# --- off the loop, in order, coalesced ------------------------------------------------------
def test_every_sqlite_call_of_a_save_runs_in_one_writer_thread_never_on_the_loop(tmp_path: Path) -> None:
    calls: list[tuple[int, str]] = []

    async def run() -> int:
        coordinator = control(tmp_path, trace=lambda sql: calls.append((threading.get_ident(), sql)))
        calls.clear()  # opening and loading happen before the loop serves anyone
        workers = [coordinator.register(Role.WORKER, "", f"w{i}")[0] for i in range(3)]
        await coordinator.handle(workers[0].member_id, GOODBYE)
        job = await coordinator.submit(json.dumps(SPEC))
        await coordinator.cancel(job.job_id)
        coordinator.close()
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert any(sql == "COMMIT" for _, sql in calls)
    threads = {thread for thread, _ in calls}
    assert loop_thread not in threads
    assert len(threads) == 1  # one writer: writes stay in order


def test_saves_asked_for_while_a_write_is_in_flight_become_one_write(tmp_path: Path) -> None:
    begins: list[str] = []
    in_commit, release = threading.Event(), threading.Event()

    def trace(sql: str) -> None:
        begins.extend([sql] if sql.startswith("BEGIN") else [])
        if sql == "COMMIT" and not in_commit.is_set():
            in_commit.set()
            release.wait(60)  # holds the first write in the writer thread

    async def run() -> None:
        coordinator = control(tmp_path, trace=trace)
        begins.clear()
        coordinator.register(Role.WORKER, "", "first")
        assert await asyncio.to_thread(in_commit.wait, 60)
        # The loop goes on serving while the writer is stuck in its commit.
        for i in range(10):
            coordinator.register(Role.WORKER, "", f"w{i}")
        flushed = asyncio.ensure_future(coordinator.flush())
        await asyncio.sleep(0)
        assert len(begins) == 1 and not flushed.done()
        release.set()
        await flushed
        assert len(begins) == 2  # the ten saves asked for during the first became one
        coordinator.close()

    asyncio.run(run())
    assert len(saved_member_ids(tmp_path)) == 11


def test_a_write_that_fails_is_retried_by_the_next_tick(tmp_path: Path) -> None:
    async def run() -> None:
        coordinator = control(tmp_path)
        holder = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the file: the save fails
        member, _ = coordinator.register(Role.WORKER, "", "w")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await coordinator.flush()
        holder.execute("ROLLBACK")
        holder.close()
        await coordinator.tick()
        await coordinator.flush()
        assert member.member_id in saved_member_ids(tmp_path)
        coordinator.close()

    asyncio.run(run())


# --- incremental -----------------------------------------------------------------------------
def test_a_save_writes_only_the_rows_that_changed(tmp_path: Path) -> None:
    async def run() -> None:
        coordinator = control(tmp_path)
        store = coordinator._store
        assert store is not None
        workers = [coordinator.register(Role.WORKER, "", f"w{i}")[0] for i in range(20)]
        jobs = [await coordinator.submit(json.dumps({**SPEC, "num_workers": 50})) for _ in range(3)]
        await coordinator.flush()

        before = store.rows_written
        await coordinator.handle(workers[7].member_id, GOODBYE)
        assert store.rows_written - before == 2  # that member's row and the membership epoch

        before = store.rows_written
        await coordinator.cancel(jobs[1].job_id)
        assert store.rows_written - before == 1  # that job's row; membership did not change

        # The goodbye changed what the pending jobs wait for (one idle worker fewer): saved once.
        await coordinator.tick()
        await coordinator.flush()
        before = store.rows_written
        await coordinator.tick()
        await coordinator.flush()
        assert store.rows_written == before  # nothing changed, nothing written
        coordinator.close()

    asyncio.run(run())


def test_the_store_skips_jobs_and_meta_equal_to_what_it_wrote(tmp_path: Path) -> None:
    cluster, _ = busy_cluster()
    store = StateStore(tmp_path)
    everything = Changes.of(cluster.membership.all(), cluster.jobs.all(), cluster.membership.epoch, 9)
    assert store.write(everything) == len(cluster.membership.all()) + len(cluster.jobs.all()) + 2
    same_jobs = Changes.of([], cluster.jobs.all(), cluster.membership.epoch, 9)
    assert store.write(same_jobs) == 0
    job = cluster.jobs.all()[0]
    job.state = JobState.CANCELLED
    assert store.write(Changes.of([], cluster.jobs.all(), cluster.membership.epoch, 9)) == 1
    assert store.load(now=0.0).next_member_id == 9


def test_a_restarted_store_does_not_rewrite_the_jobs_it_loaded(tmp_path: Path) -> None:
    cluster, _ = busy_cluster()
    store = StateStore(tmp_path)
    store.write(Changes.of(cluster.membership.all(), cluster.jobs.all(), cluster.membership.epoch))
    store.close()
    again = StateStore(tmp_path)
    saved = again.load(now=0.0)
    assert again.write(Changes.of([], saved.jobs, saved.membership_epoch)) == 0


# --- membership changes and forgetting ---------------------------------------------------------
def test_membership_names_only_the_members_that_changed_since_it_was_last_asked() -> None:
    membership = Membership()
    a, b, c = (membership.register(Role.WORKER, "", "", 0.0).member_id for _ in range(3))
    assert [m.member_id for m in membership.take_changes()[0]] == sorted([a, b, c])
    membership.seen(a, 5.0)  # heartbeats are not saved
    membership.rejoin(b, Role.WORKER, "", 6.0)  # same address: nothing saved changed
    assert membership.take_changes() == ([], [])
    membership.assign(c, "job-1")
    membership.fail(a)
    assert [m.member_id for m in membership.take_changes()[0]] == sorted([a, c])


def test_an_ended_member_is_forgotten_once_no_job_needed_it_for_the_retention() -> None:
    membership = Membership()
    live, left, needed = (membership.register(Role.SHARD, "h:1", "", 0.0).member_id for _ in range(3))
    membership.fail(left, MemberState.LEFT)
    membership.fail(needed)
    membership.take_changes()
    assert membership.forget_ended(10.0, 5.0, needed={needed}) == []
    assert membership.forget_ended(14.9, 5.0, needed={needed}) == []
    assert membership.forget_ended(15.0, 5.0, needed={needed}) == [left]
    # The job no longer needs it: its retention starts now, not when it failed.
    assert membership.forget_ended(20.0, 5.0, needed=set()) == []
    assert membership.forget_ended(25.0, 5.0, needed=set()) == [needed]
    assert [m.member_id for m in membership.all()] == [live]
    assert membership.take_changes() == ([], sorted([left, needed]))


def test_ended_members_are_forgotten_in_memory_and_in_the_store(tmp_path: Path) -> None:
    async def run() -> str:
        coordinator = control(tmp_path, retention_s=0.0)
        stays, goes = (coordinator.register(Role.WORKER, "", n)[0].member_id for n in ("stays", "goes"))
        await coordinator.handle(goes, GOODBYE)
        await coordinator.flush()
        assert saved_member_ids(tmp_path) == {stays, goes}
        await coordinator.tick()
        await coordinator.flush()
        assert [m.member_id for m in coordinator.membership.all()] == [stays]
        assert saved_member_ids(tmp_path) == {stays}
        coordinator.close()
        return goes

    goes = asyncio.run(run())

    async def after_restart() -> str:
        coordinator = control(tmp_path, retention_s=0.0)
        new, _ = coordinator.register(Role.WORKER, "", "new")
        coordinator.close()
        return new.member_id

    # Ids are never reused, not even the forgotten member's number (it was the highest).
    assert id_number(asyncio.run(after_restart())) == id_number(goes) + 1


def id_number(member_id: str) -> int:
    return int(member_id.split("-")[1])


def test_a_lost_shard_its_running_job_waits_for_is_kept_until_the_job_ends(tmp_path: Path) -> None:
    async def run() -> None:
        coordinator = control(tmp_path, retention_s=0.0)
        membership, now = coordinator.membership, time.monotonic()
        shard = membership.register(Role.SHARD, "h:1", "", now).member_id
        membership.register(Role.WORKER, "", "", now)
        spec = parse_job_spec(SPEC)
        job = coordinator.jobs.submit(spec, 1.0)
        coordinator.jobs.schedule(1.0)
        assert job.state is JobState.RUNNING
        membership.fail(shard)  # a shard restart would wait for its checkpoint
        await coordinator.tick()
        assert shard in {m.member_id for m in membership.all()}
        await coordinator.cancel(job.job_id)
        await coordinator.tick()
        assert shard not in {m.member_id for m in membership.all()}
        coordinator.close()

    asyncio.run(run())
