"""The shared-memory fast path against a real shard process (transport/shm.py): a worker on
the shard's host moves tensors through /dev/shm and gets exactly what the inline path gives;
an offer the shard cannot map falls back to inline payloads; a bad region or a bad gradient in
shared memory is refused like an inline one and changes nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import torch

from tests.integration.helpers import (
    PLAINTEXT,
    as_assigned_worker,
    exchange,
    exchange_streams,
    read_parameters,
    run_async,
)
from tidal.launcher import LocalCluster
from tidal.transport import serde, shm
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import shard_pb2 as shard_pb
from tidal.worker.links import ShardLink

pytestmark = pytest.mark.integration

SPEC = {
    "name": "shared-memory",
    "mode": "sync",
    "model": {"name": "mlp", "args": {"hidden": [64]}},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "num_workers": 1,
    "num_shards": 1,
    "steps": 50,
}


def _link(ctx: dict[str, Any], params: torch.Tensor, shared_memory: bool) -> ShardLink:
    return ShardLink(
        ctx["job_id"], ctx["worker_id"], ctx["epoch"], 0, ctx["shard"], ctx["shard_map"], params, 10.0,
        security=PLAINTEXT, shared_memory=shared_memory,
    )  # fmt: skip


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared memory", "inline"])
def test_a_worker_on_the_shards_host_trains_through_shared_memory(
    lone_shard: LocalCluster, shared_memory: bool
) -> None:
    transport = "shared_memory" if shared_memory else "grpc"
    streams_before = exchange_streams(lone_shard, "shard-0", transport)

    async def body(ctx: dict[str, Any]) -> None:
        total = ctx["shard_map"].total_elements
        params = torch.zeros(total)
        link = _link(ctx, params, shared_memory)
        try:
            await link.open()
            assert link.shared_memory is shared_memory
            if shared_memory:  # the names are gone at once; both processes keep the mapping
                names = link.payloads.segment_names()
                assert len(names) == 2 and not [p for name in names for p in shm.SHM_DIR.glob(f"{name}*")]
            await link.pull(0)
            initial, _ = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
            assert torch.equal(params, initial)
            gradient = torch.linspace(-1, 1, total)
            for clock in range(3):
                ack, _ = await link.push(f"p-{clock}", clock, gradient, 8)
                assert ack.outcome == shard_pb.PUSH_OUTCOME_APPLIED
            # Three SGD steps of lr 0.05: what the worker received is what the shard holds.
            held, versions = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
            assert versions == [3] and link.version == 3
            torch.testing.assert_close(held, initial - 3 * 0.05 * gradient)
            assert torch.equal(params, held)
        finally:
            await link.close()

    run_async(as_assigned_worker(lone_shard, SPEC, body))
    assert exchange_streams(lone_shard, "shard-0", transport) > streams_before


def test_bf16_travels_through_shared_memory_both_ways(lone_shard: LocalCluster) -> None:
    async def body(ctx: dict[str, Any]) -> None:
        total = ctx["shard_map"].total_elements
        params = torch.zeros(total)
        link = ShardLink(
            ctx["job_id"], ctx["worker_id"], ctx["epoch"], 0, ctx["shard"], ctx["shard_map"], params, 10.0,
            params_wire=torch.bfloat16, security=PLAINTEXT, shared_memory=True,
        )  # fmt: skip
        try:
            await link.open()
            assert link.shared_memory
            await link.pull(0)
            initial, _ = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
            # The parameters came down rounded to bf16 and were widened into the model.
            assert torch.equal(params, initial.to(torch.bfloat16).float())
            gradient = torch.full((total,), 0.5)
            ack, _ = await link.push("p-0", 0, gradient, 8, wire=torch.bfloat16)
            assert ack.outcome == shard_pb.PUSH_OUTCOME_APPLIED
            held, _ = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
            torch.testing.assert_close(held, initial - 0.025)  # 0.5 is exact in bf16
        finally:
            await link.close()

    bf16 = {**SPEC, "compression": {"codec": "bf16"}}
    run_async(as_assigned_worker(lone_shard, bf16, body))


def _open(ctx: dict[str, Any], offer: shard_pb.SharedMemoryOffer | None) -> shard_pb.ExchangeRequest:
    opening = shard_pb.ExchangeOpen(job_id=ctx["job_id"], worker_id=ctx["worker_id"], membership_epoch=ctx["epoch"])
    if offer is not None:
        opening.shared_memory.CopyFrom(offer)
    return shard_pb.ExchangeRequest(open=opening)


def _shared_push(ctx: dict[str, Any], shift: int = 0) -> shard_pb.ExchangeRequest:
    """A push whose payload lies in the stream's push segment, its regions moved by `shift` bytes."""
    chunks = [
        common_pb.TensorChunk(
            name=seg.name, dtype=common_pb.DTYPE_FLOAT32, shape=seg.shape, offset=seg.tensor_offset,
            shared=common_pb.SharedRegion(offset=shm.HEADER_BYTES + 4 * seg.flat_start + shift, length=4 * seg.length),
        )
        for seg in ctx["shard_map"].segments(0)
    ]  # fmt: skip
    push = shard_pb.PushChunk(push_id="p-1", membership_epoch=ctx["epoch"], chunks=chunks, last=True)
    return shard_pb.ExchangeRequest(push=push)


@pytest.mark.parametrize(
    ("fill", "shift", "field"),
    [(0.5, 1 << 20, "push.chunks[0].shared"), (float("nan"), 0, "NaN"), (float("inf"), 0, "Inf")],
    ids=["region outside the segment", "NaN in shared memory", "Inf in shared memory"],
)
def test_a_bad_push_through_shared_memory_is_refused_and_changes_nothing(
    lone_shard: LocalCluster, fill: float, shift: int, field: str
) -> None:
    async def body(ctx: dict[str, Any]) -> None:
        total = ctx["shard_map"].total_elements
        stream = shm.SharedStream.create(4 * total)
        assert stream is not None
        try:
            stream.push.tensor(torch.float32, total).fill_(fill)
            before, _ = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await exchange(ctx["shard"], [_open(ctx, stream.offer()), _shared_push(ctx, shift)])
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in failure.value.details(), failure.value.details()
            after, versions = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
            assert versions == [0] and torch.equal(before.view(torch.int32), after.view(torch.int32))
        finally:
            stream.unlink()
            stream.close()

    run_async(as_assigned_worker(lone_shard, SPEC, body))


def test_an_offer_the_shard_cannot_map_falls_back_to_inline_payloads(lone_shard: LocalCluster) -> None:
    async def body(ctx: dict[str, Any]) -> None:
        total = ctx["shard_map"].total_elements
        stream = shm.SharedStream.create(4 * total)
        assert stream is not None
        try:
            wrong_token = stream.offer()
            wrong_token.token = bytes(shm.TOKEN_BYTES)
            elsewhere = stream.offer()  # as from another host: no such files here
            elsewhere.push_segment, elsewhere.params_segment = "tidal-" + "a" * 32, "tidal-" + "b" * 32
            for offer in (wrong_token, elsewhere):
                gradient = torch.full((total,), 0.5)
                inline = list(serde.slice_to_chunks(gradient, ctx["shard_map"].segments(0), 0))
                push = shard_pb.PushChunk(push_id="p-1", membership_epoch=ctx["epoch"], chunks=inline, last=True)
                replies = await exchange(ctx["shard"], [_open(ctx, offer), shard_pb.ExchangeRequest(push=push)])
                assert replies[0].opened.shared_memory is False
                assert replies[1].ack.outcome in (shard_pb.PUSH_OUTCOME_APPLIED, shard_pb.PUSH_OUTCOME_DUPLICATE)
                params = [r.params for r in replies[2:]]
                assert params and all(not c.HasField("shared") and c.data for p in params for c in p.chunks)
        finally:
            stream.unlink()
            stream.close()

    run_async(as_assigned_worker(lone_shard, SPEC, body))
