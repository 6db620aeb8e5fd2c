"""A shard restarted from its checkpoint serves the same embedding rows, on real processes.

A coordinator and one shard (started with --checkpoint-dir) run as processes on loopback; the
test registers as the job's worker. It pushes rows (Adagrad, so optimizer state matters),
moves the dense version so the shard checkpoints, pushes rows again and moves the version
again, so the newest checkpoint's rows are a chain with deltas (only the rows changed since
the previous checkpoint, docs/embeddings.md "Checkpoints"), reads the rows, kills the shard with
SIGKILL and starts it again on the same folder. The coordinator reassigns the job with a
restore; the restarted shard must serve the same rows, refuse a retried push id as a
duplicate, and apply the next push as the shard that was never lost would have.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from tests.integration.helpers import PLAINTEXT, as_assigned_worker, exchange, open_request, run_async
from tidal.core.embeddings.shard import RowShard
from tidal.core.spec import parse_job_spec
from tidal.launcher import EPHEMERAL, LocalCluster, Service
from tidal.transport import rows as wire
from tidal.transport import serde
from tidal.transport.server import create_channel
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc
from tidal.worker.rows_client import ShardRowClient

pytestmark = pytest.mark.integration

TABLES: list[dict[str, Any]] = [
    {"name": "items", "num_embeddings": 500, "dim": 6, "optimizer": {"name": "adagrad", "lr": 0.1}},
    {"name": "users", "capacity": 16, "dim": 3, "optimizer": {"name": "adam", "lr": 0.01}},
]
SPEC: dict[str, Any] = {
    "name": "rows-restore",
    "mode": "sync",
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "num_workers": 1,
    "num_shards": 1,
    "steps": 1000,
    "seed": 4,
    "checkpoint": {"every_versions": 1, "every_s": 0, "keep_last": 2, "restart_timeout_s": 120},
    "embeddings": TABLES,
}
IDS = {"items": torch.tensor([0, 17, 499, 250, 3]), "users": torch.tensor([-5, 2**40, 7])}
WAIT_S = 120.0


class CheckpointingCluster(LocalCluster):
    def checkpoint_dir(self) -> Path:
        return self.workdir / "checkpoints" / "shard-0"

    def spawn_shard(self) -> Service:
        args = ["shard", "--coordinator", self.coordinator_address, *EPHEMERAL]
        return self.spawn("shard-0", [*args, "--checkpoint-dir", str(self.checkpoint_dir())])

    def restart_shard(self) -> None:
        old = self.services["shard-0"]
        old.process.wait(30)
        old.log.close()
        self.spawn_shard()
        self.wait_ready(["shard-0"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[CheckpointingCluster]:
    with CheckpointingCluster(tmp_path, num_shards=0, worker_slowdowns=()) as c:
        c.spawn_shard()
        c.wait_ready(["shard-0"])
        yield c


def _grads(table: str, seed: int) -> torch.Tensor:
    dim = next(t["dim"] for t in TABLES if t["name"] == table)
    return torch.randn(len(IDS[table]), dim, generator=torch.Generator().manual_seed(seed))


async def _read(address: str, job_id: str, table: str) -> tuple[torch.Tensor, list[int]]:
    dim = next(t["dim"] for t in TABLES if t["name"] == table)
    async with create_channel(address, PLAINTEXT) as channel:
        request = shard_pb.ReadRowsRequest(job_id=job_id, table=table, ids=wire.encode_ids(IDS[table]))
        reply = await shard_grpc.ParameterShardStub(channel).ReadRows(request, timeout=30)
    return wire.decode_rows(reply.rows, len(IDS[table]), dim, "rows"), list(reply.held)


async def _until_restored(cluster: CheckpointingCluster, job_id: str) -> str:
    """The restarted shard's address, once it serves the job's rows again."""
    deadline = time.monotonic() + WAIT_S
    while True:
        address = cluster.address_of("shard-0")
        try:
            await _read(address, job_id, "items")
            return address
        except grpc.aio.AioRpcError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"the restarted shard never served job {job_id}: {exc.details()}") from None
        await asyncio.sleep(0.2)


def _client(address: str, ctx: dict[str, Any], epoch: int) -> ShardRowClient:
    spec = parse_job_spec(SPEC)
    channel = create_channel(address, PLAINTEXT)
    return ShardRowClient([channel], ctx["job_id"], ctx["worker_id"], epoch, spec.embeddings, spec.step_timeout_s)


async def _dense_push(ctx: dict[str, Any], version: int) -> None:
    """One zero gradient on the dense parameters at `version`: the version moves on by one and
    a checkpoint is due."""
    start, end = ctx["shard_map"].ranges[0]
    chunks = list(serde.slice_to_chunks(torch.zeros(end - start), ctx["shard_map"].segments(0), start))
    push = shard_pb.PushChunk(
        push_id=f"{ctx['worker_id']}:{version}", base_version=version, membership_epoch=ctx["epoch"], clock=version,
        num_samples=1, chunks=chunks, last=True,
    )  # fmt: skip
    replies = await exchange(ctx["shard"], [open_request(ctx), shard_pb.ExchangeRequest(push=push)])
    assert any(r.HasField("ack") and r.ack.outcome == shard_pb.PUSH_OUTCOME_APPLIED for r in replies), replies


def test_restarted_shard_serves_the_rows_of_its_checkpoint(cluster: CheckpointingCluster) -> None:
    spec = parse_job_spec(SPEC)
    # What a shard that is never lost holds after the same pushes.
    reference = RowShard(spec, 0, 1)

    async def body(ctx: dict[str, Any]) -> None:
        client = _client(ctx["shard"], ctx, ctx["epoch"])
        folder = cluster.checkpoint_dir() / ctx["job_id"] / "shard-0"
        for version, seeds in enumerate(([0, 1], [2])):
            for seed in seeds:
                for table, ids in IDS.items():
                    await client.pull_async(table, ids)
                    await client.push_async(table, ids, _grads(table, seed))
                    reference.push(ctx["worker_id"], table, f"r{seed}", ids, _grads(table, seed), 0, ["x"])
            await _dense_push(ctx, version)
            deadline = time.monotonic() + WAIT_S
            while not (folder / f"v{version + 1:012d}.json").exists():
                assert time.monotonic() < deadline, f"no checkpoint of version {version + 1} in {folder}"
                await asyncio.sleep(0.1)
        # The checkpoint the shard restores from: a full rows file and deltas after it.
        chain = json.loads((folder / f"v{2:012d}.json").read_text())["rows"]["chain"]
        assert chain[-1] == {**chain[-1], "kind": "delta", "file": f"v{2:012d}.rows-delta.safetensors"}, chain
        assert chain[0]["kind"] == "full" and all((folder / link["file"]).exists() for link in chain), chain
        before = {table: await _read(ctx["shard"], ctx["job_id"], table) for table in IDS}
        for table, ids in IDS.items():
            torch.testing.assert_close(before[table][0], reference.pull(table, ids), rtol=1e-6, atol=1e-7)

        cluster.kill("shard-0", signal.SIGKILL)
        await asyncio.to_thread(cluster.restart_shard)
        address = await _until_restored(cluster, ctx["job_id"])
        for table in IDS:
            rows, held = await _read(address, ctx["job_id"], table)
            assert torch.equal(rows, before[table][0]) and held == before[table][1], table
        async with create_channel(address, PLAINTEXT) as channel:
            stub = shard_grpc.ParameterShardStub(channel)
            info = await stub.GetShardInfo(shard_pb.GetShardInfoRequest(), timeout=10)
            # A retry of a push the checkpoint holds is a duplicate: nothing is applied twice.
            retry = shard_pb.PushRowsRequest(
                job_id=ctx["job_id"], worker_id=ctx["worker_id"], membership_epoch=info.membership_epoch,
                table="items", push_id=f"{ctx['worker_id']}:items:1:0", ids=wire.encode_ids(IDS["items"]),
                grads=wire.encode_rows(_grads("items", 1)), dim=6,
            )  # fmt: skip
            assert (await stub.PushRows(retry, timeout=30)).outcome == shard_pb.PUSH_OUTCOME_DUPLICATE
        client.set_channels([create_channel(address, PLAINTEXT)])
        client.membership_epoch = info.membership_epoch
        for table, ids in IDS.items():
            acks = await client.push_async(table, ids, _grads(table, 7))
            assert [a.outcome for a in acks] == ["applied"]
            reference.push(ctx["worker_id"], table, "r7", ids, _grads(table, 7), 0, ["x"])
            # The optimizer state came back too: the next step is the one the lost shard would take.
            after = await client.pull_async(table, ids)
            torch.testing.assert_close(after, reference.pull(table, ids), rtol=1e-6, atol=1e-7)

    run_async(as_assigned_worker(cluster, SPEC, body), timeout_s=4 * WAIT_S)
