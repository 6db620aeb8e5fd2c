"""The coordinator's own answers (coordinator/convert.py): a job's status sums its members'
progress, a member's entry says how long it has been silent. The session's messages convert in
transport/session_convert.py (tests/unit/test_session_convert.py)."""

from __future__ import annotations

import json

from tests.unit.test_jobs import make_cluster, make_spec, start, submit
from tidal.coordinator import convert
from tidal.core.job_records import JobState, ShardProgress
from tidal.core.membership import Member, MemberState, Role
from tidal.transport.session_convert import JOB_STATE_TO_PROTO
from tidal.v1 import common_pb2 as common_pb


def test_a_job_status_sums_its_shards_and_averages_its_workers() -> None:
    cluster = make_cluster(shards=2, workers=2)
    job = submit(cluster, make_spec(workers=2, shards=2))
    start(cluster, job)
    s0, s1 = job.shard_ids
    w0, w1 = job.worker_ids
    job.shards[s0] = ShardProgress(version=4, updates_applied=3, staleness_sum=2, staleness_count=2, staleness_max=1)
    job.shards[s1] = ShardProgress(version=4, updates_applied=5, updates_rejected=1, staleness_sum=4, staleness_count=2)
    job.workers[w0].loss = 0.5  # w1 has not reported a loss yet (NaN): no part of the mean

    status = convert.job_to_proto(job)
    assert status.state == JOB_STATE_TO_PROTO[JobState.RUNNING] == common_pb.JOB_STATE_RUNNING
    assert json.loads(status.spec_json) == json.loads(job.spec.to_json())
    assert (status.updates_applied, status.updates_rejected, status.staleness_max) == (8, 1, 1)
    assert status.staleness_mean == 1.5
    assert status.train_loss == 0.5
    assert [(w.member_id, w.rank, w.loss) for w in status.workers] == [(w0, 0, 0.5), (w1, 1, 0.0)]


def test_a_member_entry_never_has_a_negative_heartbeat_age() -> None:
    member = Member("shard-1", Role.SHARD, "10.0.0.1:7000", "host", MemberState.ASSIGNED, last_seen=10.0, job_id="j")
    entry = convert.member_to_proto(member, now=12.5)
    assert (entry.role, entry.state) == (common_pb.ROLE_SHARD, common_pb.MEMBER_STATE_ASSIGNED)
    assert (entry.address, entry.job_id, entry.heartbeat_age_s) == ("10.0.0.1:7000", "j", 2.5)
    assert convert.member_to_proto(member, now=9.0).heartbeat_age_s == 0.0  # clocks read a moment apart
