"""A member's edge (transport/member_convert.py) is the inverse of the coordinator's
(coordinator/convert.py): every event a member reports arrives as itself, every command the
coordinator sends arrives as itself, and none is forgotten when the domain grows."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from tests.unit.test_jobs import make_cluster, make_spec, start, submit
from tidal.coordinator.convert import command_to_proto, event_from_proto
from tidal.core import commands, events
from tidal.core.job_records import JobState, ShardProgress
from tidal.transport.member_convert import command_from_proto, event_to_proto
from tidal.v1 import coordinator_pb2 as coord_pb

EVENTS: list[events.Event] = [
    events.Heartbeat(),
    events.Goodbye("drain"),
    events.WorkerProgressReport("j", 4, 64, 0.5, 0.25, pushes=4),
    events.ShardProgressReport("j", ShardProgress(7, 6, 1, 3, 2, 2, 1, 1, 5, pushes_by_worker={"w": 7})),
    events.ShardReady("j", 5, checkpointing=True),
    events.WorkerFinished("j", 9, 90, 8),
    events.EvalReport("j", 9, 0.3, 0.8, final=True),
    events.EvalReport("j", 9, 0.3, 1.7, final=False, metric="rmse", higher_is_better=False),
    events.TaskFailed("j", "boom"),
]


def test_every_event_type_is_covered() -> None:
    assert {type(e) for e in EVENTS} == set(typing.get_args(events.Event))


@pytest.mark.parametrize("event", EVENTS, ids=[type(e).__name__ for e in EVENTS])
def test_an_event_arrives_as_itself(event: events.Event) -> None:
    assert event_from_proto(event_to_proto(event)) == event


def _sent() -> list[commands.Command]:
    cluster = make_cluster(shards=1, workers=1)
    job = submit(cluster, make_spec(workers=1, shards=1))
    start(cluster, job)
    shard, worker = job.shard_ids[0], job.worker_ids[0]
    return [
        commands.AssignShard(shard, job, 0, restore=True),
        commands.AssignWorker(worker, job, 0, shard_addresses=("10.0.0.1:7001",)),
        commands.ChangeMembership(shard, job.job_id, 4, (worker,)),
        commands.MoveShard(worker, job.job_id, 0, shard, 6, shard_address="10.0.0.9:7000"),
        commands.Evaluate(worker, job.job_id, final=True),
        *(commands.Release(worker, job.job_id, state, "lost") for state in JobState),
    ]


def test_every_command_type_is_covered() -> None:
    assert {type(c) for c in _sent()} == set(typing.get_args(commands.Command))


@pytest.mark.parametrize("command", _sent(), ids=lambda c: type(c).__name__)
def test_a_command_arrives_as_itself(command: commands.Command) -> None:
    msg = command_to_proto(command)
    received = command_from_proto(command.member_id, msg)
    assert received is not None
    assert command_to_proto(received) == msg
    match command:
        case commands.AssignShard() | commands.AssignWorker():
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


def test_a_message_that_commands_nothing_is_no_command() -> None:
    welcome = coord_pb.SessionResponse(welcome=coord_pb.SessionWelcome(member_id="w"))
    assert command_from_proto("w", welcome) is None
    assert command_from_proto("w", coord_pb.SessionResponse()) is None
