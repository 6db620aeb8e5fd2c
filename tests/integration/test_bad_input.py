"""Hostile and mistaken pushes against a real shard process: the right status code, a
message naming the field, and parameters that stay bit-for-bit unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
import torch

from tests.integration.helpers import as_assigned_worker, exchange, read_parameters, run_async
from tidal.core.shard_map import ShardMap
from tidal.launcher import LocalCluster
from tidal.transport import serde, shm
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import shard_pb2 as shard_pb

pytestmark = pytest.mark.integration

SPEC = {
    "name": "bad-input",
    "mode": "sync",
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "num_workers": 1,
    "num_shards": 1,
    "steps": 5,
}


Mutation = Callable[[dict[str, Any]], list[shard_pb.ExchangeRequest]]


def _open(ctx: dict[str, Any], **overrides: Any) -> shard_pb.ExchangeRequest:
    fields = {"job_id": ctx["job_id"], "worker_id": ctx["worker_id"], "membership_epoch": ctx["epoch"], **overrides}
    return shard_pb.ExchangeRequest(open=shard_pb.ExchangeOpen(**fields))


def _push(ctx: dict[str, Any], chunks: list[common_pb.TensorChunk], **overrides: Any) -> shard_pb.ExchangeRequest:
    fields = {"push_id": "p-1", "base_version": 0, "membership_epoch": ctx["epoch"], "last": True, **overrides}
    return shard_pb.ExchangeRequest(push=shard_pb.PushChunk(chunks=chunks, **fields))


def _gradient_chunks(shard_map: ShardMap, fill: float = 0.5) -> list[common_pb.TensorChunk]:
    grad = torch.full((shard_map.total_elements,), fill)
    return list(serde.slice_to_chunks(grad, shard_map.segments(0), 0))


def _offer(ctx: dict[str, Any], **changes: Any) -> shard_pb.SharedMemoryOffer:
    """A well-formed offer of segments that do not exist (as from another host), then `changes`."""
    size = shm.HEADER_BYTES + 4 * ctx["shard_map"].total_elements
    fields = {
        "push_segment": "tidal-" + "0" * 32, "params_segment": "tidal-" + "1" * 32,
        "push_segment_bytes": size, "params_segment_bytes": size, "token": b"t" * shm.TOKEN_BYTES, **changes,
    }  # fmt: skip
    return shard_pb.SharedMemoryOffer(**fields)


def _with_first_chunk(ctx: dict[str, Any], **changes: Any) -> list[shard_pb.ExchangeRequest]:
    chunks = _gradient_chunks(ctx["shard_map"])
    first = chunks[0]
    for key, value in changes.items():
        if key == "shape":
            del first.shape[:]
            first.shape.extend(value)
        elif key == "shared":
            first.shared.CopyFrom(value)
        else:
            setattr(first, key, value)
    return [_open(ctx), _push(ctx, chunks)]


CASES: dict[str, tuple[Mutation, grpc.StatusCode, str]] = {
    "wrong shape": (lambda c: _with_first_chunk(c, shape=[3, 3]), grpc.StatusCode.INVALID_ARGUMENT, ".shape"),
    "wrong dtype": (
        lambda c: _with_first_chunk(c, dtype=common_pb.DTYPE_FLOAT64),
        grpc.StatusCode.INVALID_ARGUMENT,
        ".dtype",
    ),
    "unknown dtype enum": (lambda c: _with_first_chunk(c, dtype=42), grpc.StatusCode.INVALID_ARGUMENT, ".dtype"),
    "unknown tensor name": (
        lambda c: _with_first_chunk(c, name="decoder.weight"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ".name",
    ),
    "ragged data": (lambda c: _with_first_chunk(c, data=b"\x00" * 7), grpc.StatusCode.INVALID_ARGUMENT, ".data"),
    "offset out of range": (
        lambda c: _with_first_chunk(c, offset=10**9),
        grpc.StatusCode.INVALID_ARGUMENT,
        ".offset",
    ),
    "missing chunk": (
        lambda c: [_open(c), _push(c, _gradient_chunks(c["shard_map"])[1:])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "push.chunks",
    ),
    "NaN gradient": (
        lambda c: [_open(c), _push(c, _gradient_chunks(c["shard_map"], float("nan")))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN",
    ),
    "base version ahead": (
        lambda c: [_open(c), _push(c, _gradient_chunks(c["shard_map"]), base_version=9)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "push.base_version",
    ),
    "stale membership epoch on open": (
        lambda c: [_open(c, membership_epoch=c["epoch"] - 1)],
        grpc.StatusCode.FAILED_PRECONDITION,
        "membership_epoch",
    ),
    "stale membership epoch on push": (
        lambda c: [_open(c), _push(c, _gradient_chunks(c["shard_map"]), membership_epoch=c["epoch"] - 1)],
        grpc.StatusCode.FAILED_PRECONDITION,
        "membership_epoch",
    ),
    "unknown worker": (
        lambda c: [_open(c, worker_id="worker-999-impostor")],
        grpc.StatusCode.FAILED_PRECONDITION,
        "worker_id",
    ),
    "unknown job": (lambda c: [_open(c, job_id="other-job")], grpc.StatusCode.FAILED_PRECONDITION, "job_id"),
    "shared region on a stream without shared memory": (
        lambda c: _with_first_chunk(c, data=b"", shared=common_pb.SharedRegion(offset=64, length=64)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "push.chunks[0].shared",
    ),
    "shared memory offer with a path for a name": (
        lambda c: [_open(c, shared_memory=_offer(c, push_segment="../../etc/passwd"))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "open.shared_memory.push_segment",
    ),
    "shared memory offer with a short token": (
        lambda c: [_open(c, shared_memory=_offer(c, token=b"abc"))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "open.shared_memory.token",
    ),
    "shared memory offer smaller than the slice": (
        lambda c: [_open(c, shared_memory=_offer(c, params_segment_bytes=64))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "open.shared_memory.params_segment_bytes",
    ),
    "no open message first": (
        lambda c: [_push(c, _gradient_chunks(c["shard_map"]))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "open",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_push_is_refused_and_changes_nothing(lone_shard: LocalCluster, case: str) -> None:
    mutate, code, field = CASES[case]

    async def body(ctx: dict[str, Any]) -> None:
        before, _ = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await exchange(ctx["shard"], mutate(ctx))
        assert failure.value.code() == code, failure.value.details()
        assert field in failure.value.details()
        after, versions = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
        assert versions == [0]
        assert torch.equal(before.view(torch.int32), after.view(torch.int32)), "parameters changed"

    run_async(as_assigned_worker(lone_shard, SPEC, body))


def test_valid_push_is_applied_once_and_duplicates_are_not(lone_shard: LocalCluster) -> None:
    """The counterpart of the refusals above: the same stream shape with valid content applies."""

    async def body(ctx: dict[str, Any]) -> None:
        before, _ = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
        push = _push(ctx, _gradient_chunks(ctx["shard_map"]))
        replies = await exchange(ctx["shard"], [_open(ctx), push])
        kinds = [r.WhichOneof("kind") for r in replies]
        assert kinds[:2] == ["opened", "ack"] and set(kinds[2:]) == {"params"}
        assert replies[1].ack.outcome == shard_pb.PUSH_OUTCOME_APPLIED
        after, versions = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
        assert versions == [1]
        # SGD with lr 0.05 on a constant gradient of 0.5 moves every parameter by -0.025.
        torch.testing.assert_close(after, before - 0.025)
        # The same push id again (a retry) is acknowledged as a duplicate and not applied.
        retry = await exchange(ctx["shard"], [_open(ctx), _push(ctx, _gradient_chunks(ctx["shard_map"]))])
        assert retry[1].ack.outcome == shard_pb.PUSH_OUTCOME_DUPLICATE
        again, versions = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
        assert versions == [1] and torch.equal(again, after)

    run_async(as_assigned_worker(lone_shard, SPEC, body))
