"""The coordinator's edge (coordinator/convert.py): every session message that reports something
becomes its domain event, every domain command its session message, and none is forgotten
when the proto or the domain grows."""

from __future__ import annotations

import json
import typing

import pytest

from tests.unit.test_jobs import make_cluster, make_spec, start, submit
from tidal.coordinator import convert
from tidal.core import commands, events
from tidal.core.errors import InvalidArgumentError
from tidal.core.job_records import JobState, ShardProgress
from tidal.core.layout import Layout
from tidal.core.shard_map import TensorInfo
from tidal.transport.serde import shard_map_from_proto
from tidal.v1 import common_pb2 as common_pb
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
        coord_pb.SessionRequest(task_failed=coord_pb.TaskFailed(job_id="j", message="boom")),
        events.TaskFailed("j", "boom"),
    ),
    (
        coord_pb.SessionRequest(
            layout_report=coord_pb.LayoutReport(
                job_id="j",
                tensors=[common_pb.TensorSpec(name="fc.weight", shape=[3, 4], dtype=common_pb.DTYPE_FLOAT32)],
                init_digest="ab" * 16,
            )
        ),
        events.LayoutReport("j", Layout((TensorInfo("fc.weight", (3, 4), "float32"),), "ab" * 16)),
    ),
]


def test_a_layout_with_a_bad_tensor_is_refused_naming_it() -> None:
    bad = coord_pb.SessionRequest(
        layout_report=coord_pb.LayoutReport(job_id="j", tensors=[common_pb.TensorSpec(name="w", shape=[-1])])
    )
    with pytest.raises(InvalidArgumentError, match=r"layout_report\.tensors\[0\]\.shape"):
        convert.event_from_proto(bad)


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
        "prepare_worker": commands.PrepareWorker(worker, job, 0),
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
    prepare = msgs["prepare_worker"].prepare_worker
    assert (prepare.job_id, prepare.rank, prepare.world_size, list(prepare.worker_ids)) == (job.job_id, 0, 1, [worker])
    worker_msg = msgs["assign_worker"].assign_worker
    assert (worker_msg.world_size, list(worker_msg.shard_addresses)) == (1, ["10.0.0.1:7001"])
    assert (msgs["shard_moved"].shard_moved.address, msgs["shard_moved"].shard_moved.version) == ("10.0.0.9:7000", 6)
    assert list(msgs["membership_changed"].membership_changed.worker_ids) == [worker]
    release = msgs["release_job"].release_job
    assert (release.final_state, release.reason) == (convert.JOB_STATE_TO_PROTO[JobState.FAILED], "lost")
