"""The coordinator's edge (coordinator/convert.py): every session message that reports something
becomes its domain event, every domain command its session message, and none is forgotten
when the proto or the domain grows."""

from __future__ import annotations

import json
import typing

import pytest
from google.protobuf.json_format import MessageToDict

from tests.unit.test_jobs import make_cluster, make_spec, start, submit
from tidal.coordinator import convert
from tidal.core import commands, events
from tidal.core.job_records import JobState, ShardProgress
from tidal.transport.serde import shard_map_from_proto
from tidal.v1 import coordinator_pb2 as coord_pb

REPORTS = [
    (coord_pb.SessionRequest(heartbeat=coord_pb.Heartbeat(seq=3)), events.Heartbeat()),
    (coord_pb.SessionRequest(goodbye=coord_pb.Goodbye(reason="drain")), events.Goodbye("drain")),
    (
        coord_pb.SessionRequest(
            worker_progress=coord_pb.WorkerProgress(
                job_id="j", step=4, samples=64, loss=0.5, step_time_s=0.25, param_version=3, pushes=4
            )
        ),
        events.WorkerProgressReport("j", 4, 64, 0.5, 0.25, pushes=4),
    ),
    (
        coord_pb.SessionRequest(
            shard_progress=coord_pb.ShardProgress(
                job_id="j",
                version=7,
                updates_applied=6,
                updates_rejected=1,
                staleness_sum=3,
                staleness_count=2,
                staleness_max=2,
                updates_lost=1,
                versions_lost=1,
                checkpoint_version=5,
                pushes_by_worker={"w": 7},
            )
        ),
        events.ShardProgressReport("j", ShardProgress(7, 6, 1, 3, 2, 2, 1, 1, 5, pushes_by_worker={"w": 7})),
    ),
    (
        coord_pb.SessionRequest(shard_ready=coord_pb.ShardReady(job_id="j", version=5, checkpointing=True)),
        events.ShardReady("j", 5, checkpointing=True),
    ),
    (
        coord_pb.SessionRequest(worker_finished=coord_pb.WorkerFinished(job_id="j", steps=9, samples=90, pushes=8)),
        events.WorkerFinished("j", 9, 90, 8),
    ),
    (
        coord_pb.SessionRequest(
            eval_report=coord_pb.EvalReport(job_id="j", version=9, val_loss=0.3, val_accuracy=0.8, final=True)
        ),
        events.EvalReport("j", 9, 0.3, 0.8, final=True),
    ),
    (
        coord_pb.SessionRequest(
            eval_report=coord_pb.EvalReport(
                job_id="j", version=9, val_loss=0.3, val_accuracy=-0.2, metric="skill", metric_higher_is_better=True
            )
        ),
        events.EvalReport("j", 9, 0.3, -0.2, final=False, metric="skill", higher_is_better=True),
    ),
    (
        coord_pb.SessionRequest(
            eval_report=coord_pb.EvalReport(
                job_id="j", version=9, val_loss=0.3, val_accuracy=1.5, metric="mae", metric_higher_is_better=False
            )
        ),
        events.EvalReport("j", 9, 0.3, 1.5, final=False, metric="mae", higher_is_better=False),
    ),
    (
        coord_pb.SessionRequest(task_failed=coord_pb.TaskFailed(job_id="j", message="boom")),
        events.TaskFailed("j", "boom"),
    ),
]


@pytest.mark.parametrize(("msg", "event"), REPORTS, ids=[m.WhichOneof("kind") for m, _ in REPORTS])
def test_a_report_becomes_its_event(msg: coord_pb.SessionRequest, event: events.Event) -> None:
    assert convert.event_from_proto(msg) == event


def test_every_report_kind_and_every_event_type_is_covered() -> None:
    kinds = {f.name for f in coord_pb.SessionRequest.DESCRIPTOR.oneofs_by_name["kind"].fields} - {"open"}
    assert {m.WhichOneof("kind") for m, _ in REPORTS} == kinds
    assert {type(e) for _, e in REPORTS} == set(typing.get_args(events.Event))


@pytest.mark.parametrize(
    "msg", [coord_pb.SessionRequest(), coord_pb.SessionRequest(open=coord_pb.SessionOpen(member_id="w"))]
)
def test_a_message_that_reports_nothing_is_no_event(msg: coord_pb.SessionRequest) -> None:
    assert convert.event_from_proto(msg) is None


def test_every_command_becomes_its_session_message() -> None:
    cluster = make_cluster(shards=1, workers=1)
    job = submit(cluster, make_spec(workers=1, shards=1))
    start(cluster, job)
    shard, worker = job.shard_ids[0], job.worker_ids[0]
    sent = {
        "assign_shard": commands.AssignShard(shard, job, 0, restore=True),
        "assign_worker": commands.AssignWorker(worker, job, 0, shard_addresses=("10.0.0.1:7001",)),
        "membership_changed": commands.ChangeMembership(shard, job.job_id, 4, (worker,)),
        "shard_moved": commands.MoveShard(worker, job.job_id, 0, shard, 6, shard_address="10.0.0.9:7000"),
        "evaluate": commands.Evaluate(worker, job.job_id, final=True),
        "release_job": commands.Release(worker, job.job_id, JobState.FAILED, "lost"),
    }
    assert {type(c) for c in sent.values()} == set(typing.get_args(commands.Command))
    msgs = {kind: convert.command_to_proto(c) for kind, c in sent.items()}
    assert all(msg.WhichOneof("kind") == kind for kind, msg in msgs.items())

    shard_msg = msgs["assign_shard"].assign_shard
    assert (shard_msg.job_id, shard_msg.shard_index, shard_msg.restore) == (job.job_id, 0, True)
    assert json.loads(shard_msg.spec_json) == json.loads(job.spec.to_json())
    assert shard_map_from_proto(shard_msg.shard_map) == job.shard_map
    assert (shard_msg.membership_epoch, list(shard_msg.worker_ids)) == (job.membership_epoch, [worker])
    worker_msg = msgs["assign_worker"].assign_worker
    assert (worker_msg.world_size, list(worker_msg.shard_addresses)) == (1, ["10.0.0.1:7001"])
    assert (msgs["shard_moved"].shard_moved.address, msgs["shard_moved"].shard_moved.version) == ("10.0.0.9:7000", 6)
    assert list(msgs["membership_changed"].membership_changed.worker_ids) == [worker]
    release = msgs["release_job"].release_job
    assert (release.final_state, release.reason) == (convert.JOB_STATE_TO_PROTO[JobState.FAILED], "lost")


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
