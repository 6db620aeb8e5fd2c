"""A team's job that cannot run fails fast and clearly on a real cluster (issue 14): the job
is FAILED, its message names the worker (its member id) and the cause, and nothing hangs.
The team's package is importable by the workers only (tests/integration/byo.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from tests.integration.byo import PACKAGE, WIDTH_ENV, WORKERS, byo_cluster, member_id, worker_home
from tests.integration.helpers import (
    as_assigned_worker,
    coordinator_stub,
    exchange,
    init_request,
    initial_slice,
    open_request,
    read_parameters,
    run_async,
    submit,
    wait_for_job,
    wait_until,
)
from tidal.core.digests import values_digest
from tidal.launcher import LocalCluster
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import shard_pb2 as shard_pb

pytestmark = pytest.mark.integration

# The hang guard, not a timing assertion: each of these jobs fails within seconds.
FAIL_WITHIN_S = 60.0
BASE: dict[str, Any] = {
    "mode": "sync",
    "dataset": {"name": f"{PACKAGE}.data:points", "args": {"num_samples": 32}},
    "model": {"name": f"{PACKAGE}.models:two_layer"},
    "batch_size": 8,
    "num_workers": 2,
    "num_shards": 2,
    "steps": 20,
}


@pytest.fixture(scope="module")
def byo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with byo_cluster(tmp_path_factory.mktemp("byo-failures")) as cluster:
        yield cluster


def failed_job(cluster: LocalCluster, name: str, **changes: Any) -> str:
    """Runs BASE with `changes` and returns the FAILED job's message, once both workers are
    free again (a failure leaves nothing behind for the next job)."""
    address = cluster.coordinator_address
    job = submit(address, {**BASE, "name": name, **changes})
    final = wait_for_job(address, job.job_id, timeout_s=FAIL_WITHIN_S)
    assert final.state == common_pb.JOB_STATE_FAILED, (final.state, final.message)
    wait_until(lambda: _idle_workers(cluster) == len(WORKERS), FAIL_WITHIN_S, "both workers idle again")
    assert all(cluster.services[name].alive() for name in cluster.services)
    return final.message


def _idle_workers(cluster: LocalCluster) -> int:
    members = coordinator_stub(cluster.coordinator_address).GetCluster(coord_pb.GetClusterRequest(), timeout=10).members
    return sum(m.role == common_pb.ROLE_WORKER and m.state == common_pb.MEMBER_STATE_IDLE for m in members)


def names_a_worker(cluster: LocalCluster, message: str) -> bool:
    return any(member_id(cluster, name) in message for name in WORKERS)


def test_a_data_factory_that_raises(byo: LocalCluster) -> None:
    message = failed_job(byo, "byo-raises", dataset={"name": f"{PACKAGE}.data:unreachable"})
    assert names_a_worker(byo, message), message
    assert f"dataset.name '{PACKAGE}.data:unreachable'" in message
    assert "ConnectionError: s3://team-bucket/points is not reachable" in message


def test_a_data_factory_that_returns_the_wrong_types(byo: LocalCluster) -> None:
    message = failed_job(byo, "byo-wrong-types", dataset={"name": f"{PACKAGE}.data:wrong_types"})
    assert names_a_worker(byo, message), message
    assert f"dataset.name '{PACKAGE}.data:wrong_types': the factory returned dict, not SourceData" in message


def test_workers_that_disagree_on_the_layout(byo: LocalCluster) -> None:
    # Each worker reads its own width from its environment: 8 on worker-0, 12 on worker-1.
    model = {"name": f"{PACKAGE}.models:two_layer", "args": {"width_env": WIDTH_ENV}}
    message = failed_job(byo, "byo-disagree", model=model)
    assert "the workers disagree on the model" in message, message
    assert all(member_id(byo, name) in message for name in WORKERS), message
    assert "[8, 4]" in message and "[12, 4]" in message  # the first layer's weight, as each built it


def test_nan_in_the_data(byo: LocalCluster) -> None:
    # Sample 0 is fine (the load-time probe passes): the NaN is met by the training batch that holds it.
    dataset = {"name": f"{PACKAGE}.data:points", "args": {"num_samples": 32, "nan_at": 17}}
    message = failed_job(byo, "byo-nan", dataset=dataset)
    assert names_a_worker(byo, message), message
    assert "training batch of step" in message and "x holds NaN or infinity" in message, message


def test_a_data_file_missing_on_one_worker(byo: LocalCluster) -> None:
    # A relative path resolves in each worker's own folder: only worker-0 holds the file.
    gen = np.random.default_rng(3)
    x, y = gen.normal(size=(32, 4)).astype(np.float32), gen.integers(0, 3, size=32)
    np.savez(worker_home(byo, "worker-0") / "points.npz", x=x, y=y)
    message = failed_job(byo, "byo-missing-file", dataset={"name": "arrays", "args": {"x": "points.npz"}})
    assert message.startswith(f"{member_id(byo, 'worker-1')}: "), message
    assert member_id(byo, "worker-0") not in message
    assert "dataset.args.x: no such file 'points.npz'" in message


def _with_first_chunk(ctx: dict[str, Any], **changes: Any) -> list[common_pb.TensorChunk]:
    chunks = initial_slice(ctx)
    first = chunks[0]
    if "shape" in changes:
        del first.shape[:]
        first.shape.extend(changes.pop("shape"))
    for key, value in changes.items():
        setattr(first, key, value)
    return chunks


def _nan(ctx: dict[str, Any]) -> list[common_pb.TensorChunk]:
    poisoned = dict(ctx, initial=ctx["initial"].clone().fill_(float("nan")))
    return initial_slice(poisoned)


# Initial slices that do not match the job's layout, as a worker with another model would send.
BAD_INITS: dict[str, tuple[Any, str]] = {
    "a tensor of another shape": (lambda c: _with_first_chunk(c, shape=[3, 3]), "init.chunks[0].shape"),
    "a tensor of another name": (lambda c: _with_first_chunk(c, name="encoder.weight"), "init.chunks[0].name"),
    "another dtype": (lambda c: _with_first_chunk(c, dtype=common_pb.DTYPE_FLOAT64), "init.chunks[0].dtype"),
    "a tensor missing": (lambda c: initial_slice(c)[1:], "init.chunks"),
    "NaN values": (_nan, "init.chunks: the initial parameters hold NaN or Inf"),
}
SHARD_SPEC = {
    "name": "byo-init",
    "mode": "sync",
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "num_workers": 1,
    "num_shards": 1,
}


def test_an_initial_slice_that_does_not_match_the_layout_is_refused_by_the_shard(lone_shard: LocalCluster) -> None:
    """At the shard's gRPC level: this test is the job's one worker and opens the Exchange
    stream of a shard that has no parameters yet (version -1)."""

    async def refused(ctx: dict[str, Any], chunks: list[common_pb.TensorChunk], field: str) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await exchange(ctx["shard"], [open_request(ctx), init_request(ctx, chunks)])
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()
        assert field in failure.value.details()

    async def body(ctx: dict[str, Any]) -> None:
        opened = await exchange(ctx["shard"], [open_request(ctx)])
        assert opened[0].opened.version == -1
        for case, (chunks, field) in BAD_INITS.items():
            await refused(ctx, chunks(ctx), field)
            replies = await exchange(ctx["shard"], [open_request(ctx)])
            assert replies[0].opened.version == -1, f"{case}: the shard took it"
        # The slice that matches is applied, then holds: different values are refused, equal ones change nothing.
        replies = await exchange(ctx["shard"], [open_request(ctx), init_request(ctx, initial_slice(ctx))])
        assert replies[1].ack.outcome == shard_pb.PUSH_OUTCOME_APPLIED
        other = dict(ctx, initial=ctx["initial"] + 1.0)
        await refused(ctx, initial_slice(other), "initial parameters differ from those this shard started from")
        replies = await exchange(ctx["shard"], [open_request(ctx), init_request(ctx, initial_slice(ctx))])
        assert replies[1].ack.outcome == shard_pb.PUSH_OUTCOME_DUPLICATE
        params, versions = read_parameters([ctx["shard"]], ctx["job_id"], ctx["shard_map"])
        assert versions == [0] and torch.equal(params, ctx["initial"])
        # A worker that opens once the shard has parameters says what its initial slice was: one
        # that started elsewhere is refused, so no worker chose the job's start alone.
        start, end = ctx["shard_map"].ranges[0]
        mine = values_digest([ctx["initial"][start:end]])
        opening = open_request(ctx)
        opening.open.init_digest = mine
        assert (await exchange(ctx["shard"], [opening]))[0].opened.version == 0
        opening.open.init_digest = values_digest([ctx["initial"][start:end] + 1.0])
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await exchange(ctx["shard"], [opening])
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "open.init_digest" in (failure.value.details() or "")

    run_async(as_assigned_worker(lone_shard, SHARD_SPEC, body, initialize=False))
