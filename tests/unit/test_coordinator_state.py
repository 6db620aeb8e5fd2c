"""The coordinator's saved state: snapshot round trips, refusal of damaged data, and the
SQLite store (one transaction per save, adopted by a fresh JobManager and Membership)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

# isort: split
from tests.unit.test_jobs import LAYOUT, make_cluster, start, submit
from tidal.coordinator.store import FILE_NAME, Changes, StateStore
from tidal.core import snapshot
from tidal.core.errors import DataLossError
from tidal.core.job_records import JobState, ShardProgress
from tidal.core.jobs import JobManager
from tidal.core.membership import Membership, MemberState, Role
from tidal.core.spec import parse_job_spec


def busy_cluster():  # type: ignore[no-untyped-def]
    cluster = make_cluster(shards=2, workers=3)
    job = submit(cluster, parse_job_spec({"num_workers": 3, "num_shards": 2, "steps": 5}))
    start(cluster, job)
    cluster.jobs.worker_progress(job.worker_ids[0], job.job_id, 3, 96, 0.61, 0.02, 3.0, pushes=3)
    cluster.jobs.shard_progress(job.shard_ids[0], job.job_id, ShardProgress(3, 6, 1, 2, 6, 1), 3.0)
    cluster.jobs.eval_report(job.worker_ids[0], job.job_id, 3, 0.7, 0.6, False, 3.5)
    cluster.jobs.member_lost(cluster.membership.fail(job.worker_ids[1]), 4.0)
    return cluster, job


def test_a_job_survives_the_round_trip_through_json() -> None:
    _, job = busy_cluster()
    text = snapshot.dumps(snapshot.job_to_dict(job))
    back = snapshot.job_from_dict(snapshot.loads(text, "job"))
    assert back.spec == job.spec and back.shard_map == job.shard_map and back.layout == job.layout
    assert back.layout_from == job.layout_from
    assert (back.state, back.membership_epoch, back.worker_ids, back.next_rank) == (
        job.state,
        job.membership_epoch,
        job.worker_ids,
        job.next_rank,
    )
    assert back.shards == job.shards and back.evals == job.evals and back.shards_ready == job.shards_ready
    assert back.workers.keys() == job.workers.keys()
    lost = next(m for m, w in job.workers.items() if w.lost)
    assert back.workers[lost].lost == "failed"
    assert math.isnan(back.workers[job.worker_ids[1]].loss)  # never reported: NaN survives as null
    assert back.workers[job.worker_ids[0]].pushes == 3


def test_a_member_survives_the_round_trip_with_a_fresh_heartbeat_clock() -> None:
    cluster, job = busy_cluster()
    member = cluster.membership.get(job.shard_ids[0])
    back = snapshot.member_from_dict(json.loads(snapshot.dumps(snapshot.member_to_dict(member))), last_seen=99.0)
    assert (back.member_id, back.role, back.address, back.state, back.job_id) == (
        member.member_id,
        Role.SHARD,
        member.address,
        MemberState.ASSIGNED,
        job.job_id,
    )
    assert back.last_seen == 99.0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d.pop("worker_ids"), "missing field 'worker_ids'"),
        (lambda d: d.update(state="exploded"), "exploded"),
        (lambda d: d.update(spec_json='{"steps": -1}'), "spec.steps"),
        (lambda d: d["shard_map"]["ranges"].pop(), "shard_map"),
        (lambda d: d["shard_map"]["tensors"][0].update(dtype="pickle"), "pickle"),
        (lambda d: d.update(worker_ids=["ghost"]), "ghost"),
        (lambda d: d.update(message=7), "message"),
    ],
)
def test_damaged_job_data_is_refused_as_data_loss_naming_what(damage, message: str) -> None:  # type: ignore[no-untyped-def]
    _, job = busy_cluster()
    data = json.loads(snapshot.dumps(snapshot.job_to_dict(job)))
    damage(data)
    with pytest.raises(DataLossError, match=rf"job {job.job_id!r}.*{message}"):
        snapshot.job_from_dict(data)


def test_text_that_is_not_a_json_object_is_data_loss() -> None:
    with pytest.raises(DataLossError, match="job 'x': not valid JSON"):
        snapshot.loads("{", "job 'x'")
    with pytest.raises(DataLossError, match="expected a JSON object"):
        snapshot.loads("[1]", "job 'x'")


def test_a_fresh_coordinator_adopts_the_saved_jobs_and_members(tmp_path: Path) -> None:
    cluster, job = busy_cluster()
    store = StateStore(tmp_path)
    store.write(Changes.of(cluster.membership.all(), cluster.jobs.all(), cluster.membership.epoch))
    store.close()

    saved = StateStore(tmp_path).load(now=50.0)
    membership = Membership()
    membership.restore(saved.members, saved.membership_epoch)
    jobs = JobManager(membership)
    jobs.restore(saved.jobs)
    assert membership.epoch == cluster.membership.epoch
    assert [(m.member_id, m.state) for m in membership.all()] == [
        (m.member_id, m.state) for m in cluster.membership.all()
    ]
    assert all(m.last_seen == 50.0 for m in membership.all())
    adopted = jobs.get(job.job_id)
    assert adopted.state is JobState.RUNNING and adopted.worker_ids == job.worker_ids
    # Ids continue after the adopted ones, never colliding with them.
    assert membership.register(Role.WORKER, "", "", 51.0).member_id.startswith(f"worker-{len(membership.all()) - 1}-")
    assert jobs.submit(job.spec, 52.0).job_id == "job-2"
    # A survivor resumes its id; the job keeps going when the failed one is gone for good.
    survivor = job.worker_ids[0]
    assert membership.rejoin(survivor, Role.WORKER, "", 53.0) is not None


def test_a_save_only_replaces_the_rows_it_names(tmp_path: Path) -> None:
    cluster, job = busy_cluster()
    store = StateStore(tmp_path)
    store.write(Changes.of(cluster.membership.all(), cluster.jobs.all(), cluster.membership.epoch))
    job.state = JobState.SUCCEEDED
    store.write(Changes.of([], [job], cluster.membership.epoch + 1))
    saved = store.load(now=0.0)
    assert len(saved.members) == len(cluster.membership.all())
    assert [j.state for j in saved.jobs] == [JobState.SUCCEEDED]
    assert saved.membership_epoch == cluster.membership.epoch + 1


def test_a_corrupt_state_file_is_refused_as_data_loss(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(DataLossError, match=FILE_NAME):
        StateStore(tmp_path)


def test_a_tampered_row_is_refused_as_data_loss(tmp_path: Path) -> None:
    cluster, job = busy_cluster()
    store = StateStore(tmp_path)
    store.write(Changes.of(cluster.membership.all(), cluster.jobs.all(), cluster.membership.epoch))
    store.close()
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute("UPDATE jobs SET data = ? WHERE job_id = ?", ('{"job_id": "job-1"}', job.job_id))
    with pytest.raises(DataLossError, match="job 'job-1'"):
        StateStore(tmp_path).load(now=0.0)


def test_a_state_file_of_another_schema_is_refused(tmp_path: Path) -> None:
    StateStore(tmp_path).close()
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(DataLossError, match="schema 99"):
        StateStore(tmp_path)


def test_a_job_saved_while_its_workers_prepare_keeps_what_they_reported() -> None:
    cluster = make_cluster(shards=1, workers=2)
    job = submit(cluster, parse_job_spec({"num_workers": 2, "num_shards": 1, "steps": 5}))
    cluster.jobs.schedule(2.0)
    cluster.jobs.layout_report(job.worker_ids[0], job.job_id, LAYOUT, 2.5)
    back = snapshot.job_from_dict(snapshot.loads(snapshot.dumps(snapshot.job_to_dict(job)), "job"))
    assert back.shard_map is None and back.preparing
    assert back.layout == LAYOUT and back.layout_from == {job.worker_ids[0]}
    # The other worker's report, to the adopted job, plans it.
    jobs = JobManager(cluster.membership)
    jobs.restore([back])
    commands = jobs.layout_report(job.worker_ids[1], job.job_id, LAYOUT, 3.0)
    assert back.shard_map is not None and len(commands) == 1
