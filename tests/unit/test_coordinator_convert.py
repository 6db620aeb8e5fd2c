"""The coordinator's own answers (coordinator/convert.py): a job's status sums its members'
progress, a member's entry says how long it has been silent. The session's messages convert in
transport/session_convert.py (tests/unit/test_session_convert.py)."""

from __future__ import annotations

import json

from google.protobuf.json_format import MessageToDict

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


def test_a_jobs_status_names_its_validation_metric() -> None:
    cluster = make_cluster(shards=1, workers=1)
    job = submit(cluster, make_spec(workers=1, shards=1))
    start(cluster, job)
    (worker,) = job.worker_ids
    status = convert.job_to_proto(job)
    assert not status.HasField("val_accuracy") and status.val_metric == ""  # no evaluation yet
    cluster.jobs.eval_report(worker, job.job_id, 2, 0.5, 0.9, False, 3.0)  # a worker that names no metric
    cluster.jobs.eval_report(worker, job.job_id, 4, 0.4, 1.3, False, 4.0, metric="rmse", higher_is_better=False)
    status = convert.job_to_proto(job)
    assert (status.val_accuracy, status.val_metric, status.val_metric_higher_is_better) == (1.3, "rmse", False)
    assert [(e.metric, e.val_accuracy) for e in status.evals] == [("accuracy", 0.9), ("rmse", 1.3)]
    # What the REST API answers (coordinator/rest.py converts the same message).
    body = MessageToDict(status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    assert (body["val_metric"], body["val_metric_higher_is_better"], body["val_accuracy"]) == ("rmse", False, 1.3)
    assert body["evals"][-1]["metric"] == "rmse"
