"""The coordinator session's messages (transport/session_convert.py): every event a member
reports arrives at the coordinator as itself, every command the coordinator sends arrives at
the member as itself, each on its own oneof field, and none is forgotten when the domain or the
proto grows."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from tests.unit.test_jobs import make_cluster, make_spec, start, submit
from tidal.core import commands, events
from tidal.core.errors import InvalidArgumentError
from tidal.core.job_records import JobState, ShardProgress
from tidal.core.layout import Layout
from tidal.core.shard_map import TensorInfo
from tidal.transport.serde import shard_map_from_proto
from tidal.transport.session_convert import (
    JOB_STATE_FROM_PROTO,
    JOB_STATE_TO_PROTO,
    command_from_proto,
    command_to_proto,
    event_from_proto,
    event_to_proto,
)
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

# Each event with the SessionRequest field that carries it.
EVENTS: list[tuple[str, events.Event]] = [
    ("heartbeat", events.Heartbeat(seq=3)),
    ("goodbye", events.Goodbye("drain")),
    ("worker_progress", events.WorkerProgressReport("j", 4, 64, 0.5, 0.25, pushes=4, param_version=3)),
    ("shard_progress", events.ShardProgressReport("j", ShardProgress(7, 6, 1, 3, 2, 2, 1, 1, 5, {"w": 7}))),
    ("shard_ready", events.ShardReady("j", 5, checkpointing=True)),
    ("worker_finished", events.WorkerFinished("j", 9, 90, 8)),
    ("eval_report", events.EvalReport("j", 9, 0.3, 0.8, final=True)),
    ("eval_report", events.EvalReport("j", 9, 0.3, 1.5, final=False, metric="mae", higher_is_better=False)),
    ("task_failed", events.TaskFailed("j", "boom")),
    (
        "layout_report",
        events.LayoutReport(
            "j", Layout((TensorInfo("a", (2, 3), "float32"), TensorInfo("b", (), "bfloat16")), "f" * 32)
        ),
    ),
]


def test_a_layout_with_a_bad_tensor_is_refused_naming_it() -> None:
    bad = coord_pb.SessionRequest(
        layout_report=coord_pb.LayoutReport(job_id="j", tensors=[common_pb.TensorSpec(name="w", shape=[-1])])
    )
    with pytest.raises(InvalidArgumentError, match=r"layout_report\.tensors\[0\]\.shape"):
        event_from_proto(bad)


def _fields(message: type[coord_pb.SessionRequest] | type[coord_pb.SessionResponse]) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.oneofs_by_name["kind"].fields}


def test_every_event_type_and_every_report_field_is_covered() -> None:
    assert {type(e) for _, e in EVENTS} == set(typing.get_args(events.Event))
    # 'open' starts the session (transport/session.py); it reports nothing.
    assert {field for field, _ in EVENTS} == _fields(coord_pb.SessionRequest) - {"open"}


@pytest.mark.parametrize(("field", "event"), EVENTS, ids=[field for field, _ in EVENTS])
def test_an_event_arrives_as_itself_on_its_field(field: str, event: events.Event) -> None:
    msg = event_to_proto(event)
    assert msg.WhichOneof("kind") == field
    assert event_from_proto(msg) == event


def test_a_report_decodes_field_by_field() -> None:
    # One wire message written out by hand: the round trip alone would not catch two fields swapped.
    msg = coord_pb.SessionRequest(
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
    )
    assert event_from_proto(msg) == dict(EVENTS)["shard_progress"]


@pytest.mark.parametrize(
    "msg", [coord_pb.SessionRequest(), coord_pb.SessionRequest(open=coord_pb.SessionOpen(member_id="w"))]
)
def test_a_message_that_reports_nothing_is_no_event(msg: coord_pb.SessionRequest) -> None:
    assert event_from_proto(msg) is None


def _sent() -> list[tuple[str, commands.Command]]:
    """Each command with the SessionResponse field that carries it."""
    cluster = make_cluster(shards=1, workers=1)
    job = submit(cluster, make_spec(workers=1, shards=1))
    start(cluster, job)
    shard, worker = job.shard_ids[0], job.worker_ids[0]
    return [
        ("assign_shard", commands.AssignShard(shard, job, 0, restore=True)),
        # Sent while the workers prepare: there is no shard map yet.
        ("prepare_worker", commands.PrepareWorker(worker, dataclasses.replace(job, shard_map=None), 0)),
        ("assign_worker", commands.AssignWorker(worker, job, 0, shard_addresses=("10.0.0.1:7001",))),
        ("membership_changed", commands.ChangeMembership(shard, job.job_id, 4, (worker,))),
        ("shard_moved", commands.MoveShard(worker, job.job_id, 0, shard, 6, shard_address="10.0.0.9:7000")),
        ("evaluate", commands.Evaluate(worker, job.job_id, final=True)),
        *(("release_job", commands.Release(worker, job.job_id, state, "lost")) for state in JobState),
    ]


def test_every_command_type_and_every_command_field_is_covered() -> None:
    sent = _sent()
    assert {type(c) for _, c in sent} == set(typing.get_args(commands.Command))
    # 'welcome' answers the session's open; it commands nothing.
    assert {field for field, _ in sent} == _fields(coord_pb.SessionResponse) - {"welcome"}


@pytest.mark.parametrize(("field", "command"), _sent(), ids=lambda x: x if isinstance(x, str) else "")
def test_a_command_arrives_as_itself_on_its_field(field: str, command: commands.Command) -> None:
    msg = command_to_proto(command)
    assert msg.WhichOneof("kind") == field
    received = command_from_proto(command.member_id, msg)
    assert received is not None
    assert command_to_proto(received) == msg
    match command:
        case commands.AssignShard() | commands.AssignWorker() | commands.PrepareWorker():
            # The job as the assignment tells it; the coordinator's bookkeeping stays home.
            assert isinstance(received, type(command))
            sent_job, job = command.job, received.job
            assert (job.job_id, job.spec, job.shard_map) == (sent_job.job_id, sent_job.spec, sent_job.shard_map)
            assert (job.membership_epoch, job.worker_ids) == (sent_job.membership_epoch, sent_job.worker_ids)
            assert dataclasses.replace(received, job=sent_job) == command
        case commands.MoveShard():
            # The shard's member id does not travel, its address does.
            assert received == dataclasses.replace(command, shard_member_id="")
        case _:
            assert received == command


def test_an_assignment_carries_what_a_member_reads_without_decoding() -> None:
    sent = dict(_sent())
    job = typing.cast(commands.AssignShard, sent["assign_shard"]).job
    shard_msg = command_to_proto(sent["assign_shard"]).assign_shard
    assert (shard_msg.job_id, shard_msg.shard_index, shard_msg.restore) == (job.job_id, 0, True)
    assert json.loads(shard_msg.spec_json) == json.loads(job.spec.to_json())
    assert shard_map_from_proto(shard_msg.shard_map) == job.shard_map
    worker_msg = command_to_proto(sent["assign_worker"]).assign_worker
    assert (worker_msg.world_size, list(worker_msg.shard_addresses)) == (1, ["10.0.0.1:7001"])


def test_one_job_state_map_both_ways() -> None:
    assert set(JOB_STATE_TO_PROTO) == set(JobState)
    assert {JOB_STATE_FROM_PROTO[v]: v for v in JOB_STATE_TO_PROTO.values()} == JOB_STATE_TO_PROTO
    # A state this side does not know still releases the job, as failed.
    unknown = coord_pb.SessionResponse(release_job=coord_pb.ReleaseJob(job_id="j", final_state=99))
    assert command_from_proto("w", unknown) == commands.Release("w", "j", JobState.FAILED, "")
    assert common_pb.JOB_STATE_UNSPECIFIED not in JOB_STATE_FROM_PROTO


def test_a_message_that_commands_nothing_is_no_command() -> None:
    welcome = coord_pb.SessionResponse(welcome=coord_pb.SessionWelcome(member_id="w"))
    assert command_from_proto("w", welcome) is None
    assert command_from_proto("w", coord_pb.SessionResponse()) is None
