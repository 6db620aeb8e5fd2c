"""Fuzzing every RPC of the coordinator, the shard and the worker (in-process servers).

Three generators: random bytes (undecodable or not), hypothesis-generated protobuf
messages of each method's request type (streams: several), and valid gradient pushes with
one field mutated (shapes, offsets, dtypes, sizes, NaN and Inf payloads) to reach the deep
validation. For every input: no INTERNAL or UNKNOWN, the servers stay healthy, and a
rejected input leaves the shard's parameters bit for bit as they were.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import torch
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.conftest import TALLY, examples
from tests.security.inprocess import EPOCH, JOB_ID, WORKER_ID, InProcessCluster
from tests.security.proto_strategies import messages
from tidal.transport import serde
from tidal.v1 import coordinator_pb2, shard_pb2, worker_pb2
from tidal.v1 import shard_pb2 as shard_pb

FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
CALL_TIMEOUT_S = 5.0
INTERESTING = [JOB_ID, WORKER_ID, f"{WORKER_ID}@someone", "job-1", "worker-1-000000"]
SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": list(HealthCheck),
}

SERVICES = {
    "coordinator": coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"],
    "shard": shard_pb2.DESCRIPTOR.services_by_name["ParameterShard"],
    "worker": worker_pb2.DESCRIPTOR.services_by_name["Worker"],
}
METHODS: list[tuple[str, MethodDescriptor]] = [
    (server, method) for server, service in SERVICES.items() for method in service.methods
]
IDS = [f"{server}.{method.name}" for server, method in METHODS]


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def invoke(servers: InProcessCluster, server: str, method: MethodDescriptor, requests: list[Any]) -> grpc.StatusCode:
    """Sends `requests` (messages or raw bytes) and drains the answer; returns the status code."""
    path = _path(method)
    with servers.channel(server) as channel:
        try:
            if method.client_streaming:
                call = channel.stream_stream(path, request_serializer=serialize)
                responses: Iterator[Any] = call(iter(requests), timeout=CALL_TIMEOUT_S)
                for _ in responses:
                    pass
            elif method.server_streaming:
                for _ in channel.unary_stream(path, request_serializer=serialize)(requests[0], timeout=CALL_TIMEOUT_S):
                    pass
            else:
                channel.unary_unary(path, request_serializer=serialize)(requests[0], timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def check(servers: InProcessCluster, server: str, method: MethodDescriptor, requests: list[Any], kind: str) -> None:
    before = servers.params_bits()
    code = invoke(servers, server, method, requests)
    TALLY[(f"grpc:{kind}", code.name)] += 1
    assert code not in FORBIDDEN, (server, method.name, code, requests)
    if code != grpc.StatusCode.OK:
        assert torch.equal(servers.params_bits(), before), (method.name, code, "a refused input changed parameters")


def _healthy(servers: InProcessCluster) -> None:
    for name in servers.addresses:
        with servers.channel(name) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    assert servers.runtime.state.params.isfinite().all(), "non-finite values reached the parameters"


@pytest.mark.parametrize(("server", "method"), METHODS, ids=IDS)
def test_random_bytes(servers: InProcessCluster, server: str, method: MethodDescriptor) -> None:
    frames = st.lists(st.binary(max_size=256), min_size=1, max_size=3 if method.client_streaming else 1)

    @settings(max_examples=examples(300), **SETTINGS)
    @given(frames)
    def run(requests: list[bytes]) -> None:
        check(servers, server, method, requests, "random bytes")

    run()
    _healthy(servers)


@pytest.mark.parametrize(("server", "method"), METHODS, ids=IDS)
def test_generated_messages(servers: InProcessCluster, server: str, method: MethodDescriptor) -> None:
    one = messages(method.input_type, INTERESTING)
    if method.client_streaming:
        # Often a plausible first message, so the rest of the stream reaches deeper code.
        first: st.SearchStrategy[Any] = st.one_of(one, _plausible_open(method))
        requests = st.tuples(first, st.lists(one, max_size=3)).map(lambda t: [t[0], *t[1]])
    else:
        requests = one.map(lambda m: [m])

    @settings(max_examples=examples(350), **SETTINGS)
    @given(requests)
    def run(batch: list[Any]) -> None:
        check(servers, server, method, batch, "generated messages")

    run()
    _healthy(servers)


def _plausible_open(method: MethodDescriptor) -> st.SearchStrategy[Any]:
    if method.name == "Exchange":
        opened = shard_pb.ExchangeOpen(job_id=JOB_ID, worker_id=WORKER_ID, membership_epoch=EPOCH)
        return st.just(shard_pb.ExchangeRequest(open=opened))
    if method.name == "Session":
        return st.just(coordinator_pb2.SessionRequest(open=coordinator_pb2.SessionOpen(member_id=WORKER_ID)))
    return messages(method.input_type, INTERESTING)


# --- mutated valid pushes ---------------------------------------------------------------

_CHUNK_FIELDS = ("name", "dtype", "shape", "offset", "data", "indices", "span")
_POISON = [math.nan, math.inf, -math.inf]
# Every push gets a fresh id: a repeated id is acknowledged as a duplicate before validation.
_PUSH_IDS = itertools.count()


@st.composite
def mutated_push(draw: st.DrawFn, servers: InProcessCluster) -> tuple[list[Any], str]:
    """A valid push (right names, shapes, offsets) with one thing changed."""
    shard_map = servers.shard_map
    grad = torch.full((shard_map.total_elements,), 0.25)
    chunks = list(serde.slice_to_chunks(grad, shard_map.segments(0), 0))
    target = chunks[draw(st.integers(0, len(chunks) - 1))]
    what = draw(st.sampled_from([*_CHUNK_FIELDS, "poison", "chunk count", "push header", "none"]))
    if what == "name":
        target.name = draw(st.sampled_from(["", "nope", "layers.0.weight ", chunks[-1].name + "x"]))
    elif what == "dtype":
        target.dtype = draw(st.integers(-1, 9))
    elif what == "shape":
        del target.shape[:]
        target.shape.extend(draw(st.lists(st.integers(-3, 1 << 40), max_size=4)))
    elif what == "offset":
        target.offset = draw(st.sampled_from([-1, 1, 1 << 40, -(1 << 63), (1 << 63) - 1]))
    elif what == "data":
        target.data = draw(st.binary(max_size=64)) + target.data[: draw(st.integers(0, len(target.data)))]
    elif what == "indices":
        target.indices = draw(st.binary(min_size=1, max_size=32))
    elif what == "span":
        target.span = draw(st.sampled_from([-1, 1, 1 << 40, (1 << 63) - 1]))
    elif what == "poison":
        values = bytearray(target.data)
        position = draw(st.integers(0, len(values) // 4 - 1)) * 4
        values[position : position + 4] = struct.pack("<f", draw(st.sampled_from(_POISON)))
        target.data = bytes(values)
    elif what == "chunk count":
        chunks = chunks * draw(st.integers(2, 5))
    push = shard_pb.PushChunk(
        push_id=draw(st.sampled_from(["p-fixed", "", "x" * 300])) if what == "push header" else f"p-{next(_PUSH_IDS)}",
        base_version=draw(st.sampled_from([-5, 1 << 40])) if what == "push header" else servers.runtime.state.version,
        membership_epoch=EPOCH if what != "push header" else draw(st.sampled_from([0, 1 << 60])),
        chunks=chunks,
        last=True,
    )
    opened = shard_pb.ExchangeOpen(job_id=JOB_ID, worker_id=WORKER_ID, membership_epoch=EPOCH)
    return [shard_pb.ExchangeRequest(open=opened), shard_pb.ExchangeRequest(push=push)], what


def test_mutated_pushes(servers: InProcessCluster) -> None:
    exchange = SERVICES["shard"].methods_by_name["Exchange"]
    outcomes: dict[str, set[str]] = {}

    @settings(max_examples=examples(1500), **SETTINGS)
    @given(mutated_push(servers))
    def run(case: tuple[list[Any], str]) -> None:
        requests, what = case
        before = servers.params_bits()
        code = invoke(servers, "shard", exchange, requests)
        TALLY[("grpc:mutated pushes", code.name)] += 1
        outcomes.setdefault(what, set()).add(code.name)
        assert code not in FORBIDDEN, (what, code)
        if code != grpc.StatusCode.OK:
            assert torch.equal(servers.params_bits(), before), (what, code)
        if what == "poison":
            assert code == grpc.StatusCode.INVALID_ARGUMENT, code

    run()
    _healthy(servers)
    # The generator did reach the deep checks: every mutation kind was tried and most refused.
    assert {"name", "shape", "offset", "poison", "dtype"} <= set(outcomes)
    assert outcomes["poison"] == {"INVALID_ARGUMENT"}
    assert outcomes["shape"] <= {"INVALID_ARGUMENT", "OK"}


def test_undecodable_requests_are_invalid_argument(servers: InProcessCluster) -> None:
    """grpc-python would answer INTERNAL/UNKNOWN; the guard names the message type."""
    garbage = b"\xff\xff\xff\xff"
    for server, method in METHODS:
        code = invoke(servers, server, method, [garbage])
        TALLY[("grpc:undecodable", code.name)] += 1
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method.name, code)
