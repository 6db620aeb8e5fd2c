"""Embedding rows over the real RPCs: two shards, each a real ShardNode and ShardServicer behind
a real grpc.aio server (create_server: the guard with bearer tokens, the metrics interceptor)
on an ephemeral loopback port, holding a job as a shard builds it from the coordinator's
AssignShard. The workers' side is the real ShardRowClient (worker/rows_client.py), called from
this thread as the embedding layer calls it, and raw stubs for the bad inputs.

The checkpoint-and-restart case runs on real processes: tests/integration/test_embedding_restore.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import torch
from prometheus_client import CollectorRegistry

from tidal.core import commands
from tidal.core.embeddings.init import initial_rows
from tidal.core.embeddings.routing import shard_of
from tidal.core.job_records import Job
from tidal.core.plan import job_dataset_info, job_model, job_shard_map
from tidal.core.spec import parse_job_spec
from tidal.core.tokens import TokenTable
from tidal.shard.convert import build_state
from tidal.shard.main import ShardNode
from tidal.shard.metrics import ShardMetrics
from tidal.shard.row_metrics import RowMetrics
from tidal.shard.rows import build_rows
from tidal.shard.runtime import ShardRuntime
from tidal.shard.servicer import ShardServicer, add_to_server
from tidal.transport import rows as wire
from tidal.transport.limits import MAX_ROW_IDS
from tidal.transport.metrics import GrpcMetricsInterceptor
from tidal.transport.server import create_channel, create_server
from tidal.transport.tls import SecurityConfig
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc
from tidal.worker.rows_client import ShardRowClient

pytestmark = pytest.mark.integration

JOB_ID = "rows-1"
EPOCH = 1
WORKERS = ["worker-0-aaaa@w0", "worker-1-bbbb@w1"]
TOKENS = {"w0": "w0-" + "a" * 40, "w1": "w1-" + "b" * 40, "admin": "admin-" + "c" * 40}
SPEC: dict[str, Any] = {
    "name": "rows",
    "mode": "sync",
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "num_workers": 2,
    "num_shards": 2,
    "seed": 9,
    # A request ahead of the shard's membership epoch waits this long before it is refused.
    "step_timeout_s": 1.0,
    "embeddings": [
        {"name": "items", "num_embeddings": 1000, "dim": 8, "optimizer": {"name": "adam", "lr": 0.01, "eps": 1e-12}},
        {"name": "users", "capacity": 64, "dim": 4, "optimizer": {"name": "sgd", "lr": 0.5}},
        {"name": "clicks", "num_embeddings": 100, "dim": 2, "mode": "sync", "optimizer": {"name": "sgd", "lr": 1.0}},
        # Rows of 16 KiB: 768 ids fill a request, so a batch of a few thousand is sent in parts.
        {"name": "wide", "num_embeddings": 4000, "dim": 4096, "mode": "sync", "optimizer": {"name": "sgd", "lr": 1.0}},
    ],
}
INVALID, PRECONDITION, DENIED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
)


@dataclass
class Shard:
    node: ShardNode
    registry: CollectorRegistry
    address: str


class RowCluster:
    """Two shards of one job, served on a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="row-shards", daemon=True)
        self._thread.start()
        self._servers: list[grpc.aio.Server] = []
        self.shards: list[Shard] = []
        self.spec = parse_job_spec(json.dumps(SPEC))
        self.call(self._start())

    def call(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _start(self) -> None:
        tokens = TokenTable.parse(json.dumps({"tokens": [
            {"token": TOKENS["w0"], "role": "worker", "identity": "w0"},
            {"token": TOKENS["w1"], "role": "worker", "identity": "w1"},
            {"token": TOKENS["admin"], "role": "admin", "identity": "admin"},
        ]}))  # fmt: skip
        model = job_model(self.spec, job_dataset_info(self.spec))
        shard_map = job_shard_map(self.spec, model)
        job = Job(JOB_ID, self.spec, shard_map, created_at=0.0, membership_epoch=EPOCH, worker_ids=list(WORKERS))
        for index in range(2):
            registry = CollectorRegistry()
            state = build_state(commands.AssignShard(f"shard-{index}", job, index))
            node = ShardNode(None, ShardMetrics(registry), row_metrics=RowMetrics(registry))  # type: ignore[arg-type]
            node.runtime = node.last_runtime = ShardRuntime(JOB_ID, state, node.metrics.for_job(JOB_ID, "sync", index))
            node.rows = build_rows(JOB_ID, state, node.row_metrics)
            interceptors = [GrpcMetricsInterceptor(registry)]
            server, port = create_server("127.0.0.1:0", SecurityConfig(tokens=tokens), interceptors)
            add_to_server(ShardServicer(node, shared_memory=False), server)
            await server.start()
            self._servers.append(server)
            self.shards.append(Shard(node, registry, f"127.0.0.1:{port}"))

    def client(self, worker: int) -> ShardRowClient:
        """A worker's row client, its channels on the servers' loop (as on a worker's)."""

        async def make() -> ShardRowClient:
            security = SecurityConfig(token=TOKENS[f"w{worker}"])
            channels = [create_channel(s.address, security) for s in self.shards]
            return ShardRowClient(
                channels, JOB_ID, WORKERS[worker], EPOCH, self.spec.embeddings, self.spec.step_timeout_s, self.loop
            )

        return self.call(make())

    def rpc(self, shard: int, method: str, request: Any, token: str = "w0") -> tuple[grpc.StatusCode, Any]:
        """One call on a raw stub: its status and reply (None when refused) and details."""

        async def go() -> tuple[grpc.StatusCode, Any]:
            async with create_channel(self.shards[shard].address, SecurityConfig(token=TOKENS[token])) as channel:
                try:
                    reply = await getattr(shard_grpc.ParameterShardStub(channel), method)(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), exc.details()
                return grpc.StatusCode.OK, reply

        return self.call(go())

    def read(self, table: str, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ReadRows (as admin) on the shard of each id: the rows and which are held."""
        dim = self.spec.embedding(table).dim  # type: ignore[union-attr]
        rows, held = torch.empty((len(ids), dim)), torch.zeros(len(ids), dtype=torch.bool)
        owners = shard_of(table, ids, 2)
        for index in range(2):
            mask = owners == index
            if not bool(mask.any()):
                continue
            request = shard_pb.ReadRowsRequest(job_id=JOB_ID, table=table, ids=wire.encode_ids(ids[mask]))
            code, reply = self.rpc(index, "ReadRows", request, token="admin")
            assert code == grpc.StatusCode.OK, reply
            rows[mask] = wire.decode_rows(reply.rows, int(mask.sum()), dim, "rows")
            held[mask] = torch.tensor(list(reply.held), dtype=torch.bool)
        return rows, held

    def metric(self, shard: int, name: str, table: str, **labels: str) -> float:
        value = self.shards[shard].registry.get_sample_value(
            name, {"tidal_job": JOB_ID, "shard": str(shard), "table": table, **labels}
        )
        return 0.0 if value is None else value

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                await server.stop(0)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RowCluster]:
    c = RowCluster()
    try:
        yield c
    finally:
        c.close()


def _initial(c: RowCluster, table: str, ids: torch.Tensor) -> torch.Tensor:
    spec = c.spec.embedding(table)
    assert spec is not None
    return initial_rows(c.spec.seed, table, ids, spec.dim, spec.init)


def test_pull_push_and_read_through_the_rpcs(cluster: RowCluster) -> None:
    client = cluster.client(0)
    ids = torch.tensor([3, 999, 0, 512, 77, 41, 8, 600], dtype=torch.int64)
    assert set(shard_of("items", ids, 2).tolist()) == {0, 1}, "the batch spans both shards"
    before = client.pull("items", ids)
    torch.testing.assert_close(before, _initial(cluster, "items", ids), rtol=0, atol=0)
    grads = torch.randn(len(ids), 8, generator=torch.Generator().manual_seed(0))
    acks = client.push("items", ids, grads)
    assert sorted(a.shard for a in acks) == [0, 1] and {a.outcome for a in acks} == {"applied"}
    # Adam's first step of a row moves each element by lr against its gradient's sign.
    expected = before - 0.01 * torch.sign(grads)
    torch.testing.assert_close(client.pull("items", ids), expected, rtol=1e-5, atol=1e-6)
    rows, held = cluster.read("items", torch.cat([ids, torch.tensor([5])]))
    torch.testing.assert_close(rows[:-1], expected, rtol=1e-5, atol=1e-6)
    assert held.tolist() == [True] * len(ids) + [False]
    held_total = sum(cluster.metric(s, "tidal_shard_embedding_rows", "items") for s in range(2))
    pushed_total = sum(cluster.metric(s, "tidal_shard_embedding_rows_pushed_total", "items") for s in range(2))
    assert (held_total, pushed_total) == (len(ids), len(ids))
    sent = sum(cluster.metric(s, "tidal_shard_embedding_bytes_total", "items", direction="sent") for s in range(2))
    assert sent >= 2 * len(ids) * 8 * 4
    # The client counts the messages it sent and received: the ids and rows (or gradients),
    # plus the requests' other fields (job, worker, table, push id), a few dozen bytes each.
    payload = len(ids) * (8 + 8 * 4)
    pulled = client.pull_counted("items", ids)
    assert payload < pulled.wire_bytes < payload + 2 * 200, pulled.wire_bytes
    pushed = sum(a.wire_bytes for a in client.push("items", ids, grads))
    assert payload < pushed < payload + 2 * 200, pushed


def test_hashed_table_takes_any_int64_id_and_evicts_within_capacity(cluster: RowCluster) -> None:
    client = cluster.client(1)
    ids = torch.tensor([-(2**62), 2**62, -1, 123456789], dtype=torch.int64)
    before = client.pull("users", ids)
    client.push("users", ids, torch.ones(4, 4))
    torch.testing.assert_close(client.pull("users", ids), before - 0.5)
    many = torch.arange(10_000, 10_200, dtype=torch.int64)  # 200 ids, capacity 64 (32 a shard)
    for chunk in many.split(20):
        client.push("users", chunk, torch.ones(len(chunk), 4))
    held = [cluster.metric(s, "tidal_shard_embedding_rows", "users") for s in range(2)]
    evicted = sum(cluster.metric(s, "tidal_shard_embedding_evictions_total", "users") for s in range(2))
    assert all(h <= 32 for h in held) and evicted >= 204 - 64, (held, evicted)


def test_sync_table_applies_the_sum_of_both_workers_once(cluster: RowCluster) -> None:
    w0, w1 = cluster.client(0), cluster.client(1)
    ids = torch.tensor([1, 2, 3, 4, 5, 6], dtype=torch.int64)
    start = w0.pull("clicks", ids)
    assert w0.push("clicks", ids[:4], torch.ones(4, 2))[0].outcome == "buffered"
    # w0's pull of step 1 waits for step 0, which waits for w1.
    waiting = asyncio.run_coroutine_threadsafe(w0.pull_async("clicks", ids), cluster.loop)
    assert not waiting.done()
    assert {a.outcome for a in w1.push("clicks", ids[2:], torch.full((4, 2), 2.0))} <= {"applied", "buffered"}
    expected = start.clone()
    expected[:4] -= 1.0
    expected[2:] -= 2.0
    torch.testing.assert_close(waiting.result(30), expected)
    assert w0.steps["clicks"] == w1.steps["clicks"] == 1


def test_sync_step_in_parts_and_on_a_shard_a_workers_batch_missed(cluster: RowCluster) -> None:
    w0, w1 = cluster.client(0), cluster.client(1)
    many = torch.arange(0, 3400, 2, dtype=torch.int64)  # 1,700 ids: two parts per shard
    few = _owned("wide", 0, 5)  # w1's batch: nothing on shard 1
    start = w0.pull("wide", many)
    acks = w0.push("wide", many, torch.ones(len(many), 4096))
    assert sorted(a.shard for a in acks) == [0, 0, 1, 1] and {a.outcome for a in acks} == {"buffered"}
    acks = w1.push("wide", few, torch.full((len(few), 4096), 2.0))
    assert sorted(a.shard for a in acks) == [0, 1], "w1's step reaches shard 1 too, without ids"
    assert {a.outcome for a in acks} == {"applied"}
    expected = start - 1.0
    expected[torch.isin(many, few)] -= 2.0
    torch.testing.assert_close(w0.pull("wide", many), expected)
    on_shard_1 = many[shard_of("wide", many, 2) == 1][:3]
    torch.testing.assert_close(w1.pull("wide", on_shard_1), start[torch.isin(many, on_shard_1)] - 1.0)


def _ids(*values: int) -> bytes:
    return wire.encode_ids(torch.tensor(values, dtype=torch.int64))


def _owned(table: str, shard: int, count: int) -> torch.Tensor:
    ids = torch.arange(200, dtype=torch.int64)
    return ids[shard_of(table, ids, 2) == shard][:count]


def _push(**fields: Any) -> shard_pb.PushRowsRequest:
    ids = _owned("items", 0, 3)
    base = {
        "job_id": JOB_ID, "worker_id": WORKERS[0], "membership_epoch": EPOCH, "table": "items",
        "push_id": f"bad:{sorted(fields)}", "ids": wire.encode_ids(ids), "grads": wire.encode_rows(torch.ones(3, 8)),
        "dim": 8,
    }  # fmt: skip
    return shard_pb.PushRowsRequest(**{**base, **fields})


def _nan_grads() -> bytes:
    grads = torch.ones(3, 8)
    grads[2, 5] = float("nan")
    return wire.encode_rows(grads)


BAD_PUSHES: dict[str, tuple[dict[str, Any], grpc.StatusCode, str]] = {
    "id out of range": (
        {"ids": _ids(5, 1000, -3)},
        INVALID,
        "ids: 2 ids outside table 'items''s range [0, 1000): 1000, -3",
    ),
    "too many ids": (
        {"ids": wire.encode_ids(torch.arange(MAX_ROW_IDS + 1))},
        INVALID,
        f"ids: {MAX_ROW_IDS + 1} ids, more than the limit of {MAX_ROW_IDS} per request",
    ),
    "wrong row size": (
        {"grads": wire.encode_rows(torch.ones(3, 7))},
        INVALID,
        "grads: 84 bytes, expected 3 ids x dim 8",
    ),
    "wrong dim": ({"dim": 7}, INVALID, "dim: 7, but table 'items' has rows of dim 8"),
    "ids not whole": ({"ids": b"\x01" * 12}, INVALID, "ids: 12 bytes is not a whole number of int64 ids"),
    "nan gradient": ({"grads": _nan_grads()}, INVALID, "grads: NaN or Inf in the rows of 1 ids of table 'items'"),
    "unknown table": ({"table": "nope"}, INVALID, "table: job 'rows' has no embedding table 'nope'"),
    "another worker's id": ({"worker_id": WORKERS[1]}, DENIED, f"worker_id: '{WORKERS[1]}' does not belong to w0"),
    "not a member": ({"worker_id": "worker-7-cccc@w0"}, PRECONDITION, "worker_id: 'worker-7-cccc@w0' is not a member"),
    "wrong job": ({"job_id": "other"}, PRECONDITION, "job_id: this shard serves job 'rows-1', not 'other'"),
    "epoch ahead": (
        {"membership_epoch": EPOCH + 5},
        PRECONDITION,
        "membership_epoch: 6 is ahead of this shard's epoch 1",
    ),
    "empty push id": ({"push_id": ""}, INVALID, "push_id: must not be empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_PUSHES))
def test_bad_push_is_refused_naming_the_field_and_changes_nothing(cluster: RowCluster, case: str) -> None:
    fields, code, needle = BAD_PUSHES[case]
    ids = _owned("items", 0, 3)
    before = cluster.read("items", ids)
    got, details = cluster.rpc(0, "PushRows", _push(**fields))
    assert (got, needle in str(details)) == (code, True), details
    assert all(torch.equal(a, b) for a, b in zip(cluster.read("items", ids), before, strict=True))


def test_bad_pulls_and_reads_are_refused_naming_the_field(cluster: RowCluster) -> None:
    pull = {"job_id": JOB_ID, "worker_id": WORKERS[0], "membership_epoch": EPOCH, "table": "items"}
    on_shard_1 = _owned("items", 1, 2)
    cases = [
        ("PullRows", shard_pb.PullRowsRequest(**pull, ids=_ids(1, 1000)), INVALID, "ids: 1 ids outside"),
        ("PullRows", shard_pb.PullRowsRequest(**pull, ids=_ids(7, 7)), INVALID, "ids: 1 ids appear more than once"),
        ("PullRows", shard_pb.PullRowsRequest(**pull, ids=wire.encode_ids(on_shard_1)), INVALID,
         "ids of table 'items' belong to other shards, not shard 0"),
        ("PullRows", shard_pb.PullRowsRequest(**pull, ids=b""), INVALID, "ids: no ids"),
        ("PullRows", shard_pb.PullRowsRequest(**{**pull, "worker_id": WORKERS[1]}, ids=_ids(1)), DENIED, "worker_id"),
        ("ReadRows", shard_pb.ReadRowsRequest(job_id=JOB_ID, table="nope", ids=_ids(1)), INVALID, "table: "),
        ("ReadRows", shard_pb.ReadRowsRequest(job_id="x", table="items", ids=_ids(1)), PRECONDITION, "job_id: "),
    ]  # fmt: skip
    for method, request, code, needle in cases:
        got, details = cluster.rpc(0, method, request)
        assert (got, needle in str(details)) == (code, True), (method, request, details)
    refused = cluster.metric(0, "tidal_shard_embedding_refused_ids_total", "items")
    assert refused >= 1 + 1 + len(on_shard_1)


def test_a_repeated_push_id_is_acknowledged_but_not_applied(cluster: RowCluster) -> None:
    ids = _owned("items", 0, 3)
    request = _push(push_id="once", ids=wire.encode_ids(ids), grads=wire.encode_rows(torch.ones(3, 8)))
    code, first = cluster.rpc(0, "PushRows", request)
    after = cluster.read("items", ids)
    code_again, again = cluster.rpc(0, "PushRows", request)
    assert (code, code_again) == (grpc.StatusCode.OK, grpc.StatusCode.OK)
    assert (first.outcome, again.outcome) == (shard_pb.PUSH_OUTCOME_APPLIED, shard_pb.PUSH_OUTCOME_DUPLICATE)
    assert torch.equal(cluster.read("items", ids)[0], after[0])
