"""Bounded submits and bounded models. A spec past the size or nesting limits is
INVALID_ARGUMENT naming its field, over a real gRPC server, and creates no job. The model is
built by the workers only (core/layout.py): each sizes it on the meta device before it
allocates it (checked here on `meta_model`; tests/integration/test_bad_input.py submits such
specs to a real cluster, whose job fails naming the worker and the field)."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

# isort: split
from tidal.coordinator.control import Control
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.rest import create_app
from tidal.coordinator.servicer import CoordinatorServicer
from tidal.core.errors import InvalidArgumentError
from tidal.core.model_size import (
    MAX_MODEL_PARAMETERS,
    MAX_MODEL_TENSORS,
    ModelSize,
    check_size,
    estimate_builtin,
    meta_model,
)
from tidal.core.models import build_model, count_parameters
from tidal.core.plan import job_dataset_info, job_layout, job_model, job_shard_map
from tidal.core.spec import MAX_SPEC_BYTES, MAX_SPEC_DEPTH, parse_job_spec
from tidal.transport.server import create_channel, create_server
from tidal.transport.tls import SecurityConfig
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

_FACTORY_MODULE = "tidal_test_big_models"


@pytest.fixture
def big_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """User factories that would take all memory, or never end, if built for real."""
    (tmp_path / f"{_FACTORY_MODULE}.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def huge(input_shape, num_classes):
                return nn.Linear(10**6, 10**6)  # 4 TB of float32

            def endless(input_shape, num_classes):
                layers = []
                while True:  # ends only if the size check stops it
                    layers.append(nn.Linear(1, 1))

            def broken(input_shape, num_classes):
                raise RuntimeError("cannot allocate memory")

            def small(input_shape, num_classes):
                return nn.Linear(input_shape[-1], num_classes)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, _FACTORY_MODULE, raising=False)
    yield _FACTORY_MODULE
    sys.modules.pop(_FACTORY_MODULE, None)


# --- the estimate ---------------------------------------------------------------------------

BUILTINS = [
    ("mlp", {}, (14,), 2),
    ("mlp", {"hidden": [32, 7, 5]}, (1, 4, 4), 3),
    ("mlp", {"hidden": []}, (6,), 4),
    ("station_mlp", {"hidden": [9]}, (12,), 3),
    ("cnn", {}, (1, 8, 8), 10),
    ("cnn", {"channels": [4, 8, 8], "kernel_size": 5}, (3, 16, 12), 10),
]


@pytest.mark.parametrize(("name", "args", "shape", "classes"), BUILTINS)
def test_the_estimate_of_a_builtin_model_is_its_exact_size(
    name: str, args: dict[str, Any], shape: tuple[int, ...], classes: int
) -> None:
    model = build_model(name, args, shape, classes, seed=0)
    size = estimate_builtin(name, args, shape, classes)
    assert size == ModelSize(count_parameters(model), len(list(model.parameters())))


@pytest.mark.parametrize(("name", "args", "shape", "classes"), BUILTINS)
def test_the_meta_model_has_the_real_models_shapes_and_no_storage(
    name: str, args: dict[str, Any], shape: tuple[int, ...], classes: int
) -> None:
    real = build_model(name, args, shape, classes, seed=0)
    meta = meta_model(name, args, shape, classes, seed=0)
    assert [(n, p.shape, p.dtype) for n, p in meta.named_parameters()] == [
        (n, p.shape, p.dtype) for n, p in real.named_parameters()
    ]
    assert all(p.is_meta for p in meta.parameters())


def test_the_layout_is_the_shard_map_of_the_real_model() -> None:
    for data in ({}, {"model": {"name": "mlp", "args": {"hidden": [16, 8]}}, "num_shards": 3}):
        spec = parse_job_spec(data)
        assert job_layout(spec) == job_shard_map(spec, job_model(spec, job_dataset_info(spec)))


# --- the limits -----------------------------------------------------------------------------


def test_check_size_allows_the_limits_themselves() -> None:
    check_size(ModelSize(MAX_MODEL_PARAMETERS, MAX_MODEL_TENSORS), "model")
    with pytest.raises(InvalidArgumentError, match=r"^model: .* parameters \(1\.0 GiB"):
        check_size(ModelSize(MAX_MODEL_PARAMETERS + 1, 2), "model")
    with pytest.raises(InvalidArgumentError, match=r"^model: .* parameter tensors"):
        check_size(ModelSize(2, MAX_MODEL_TENSORS + 1), "model")


@pytest.mark.parametrize(
    ("name", "args", "shape", "classes", "message"),
    [
        ("mlp", {"hidden": [10**9]}, (14,), 2, r"model\.args\.hidden: .* parameters"),
        ("mlp", {"hidden": [10**40]}, (14,), 2, r"model\.args\.hidden: .* parameters"),
        ("mlp", {"hidden": [1] * 4_000_000}, (14,), 2, r"model\.args\.hidden: .* parameter tensors"),
        ("station_mlp", {"hidden": [2**20, 2**20]}, (12,), 3, r"model\.args\.hidden: .* parameters"),
        ("cnn", {"channels": [2**16, 2**16]}, (1, 8, 8), 10, r"model\.args\.channels: .* parameters"),
        ("grid_forecaster", {"channels": 4096, "blocks": 64}, (2, 3, 8, 8), 3, r"model\.args: .* parameters"),
    ],
    ids=["wide mlp", "absurdly wide mlp", "four million layers", "wide station mlp", "wide cnn", "wide grid"],
)
def test_a_builtin_model_over_a_limit_is_refused_naming_the_field(
    name: str, args: dict[str, Any], shape: tuple[int, ...], classes: int, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        meta_model(name, args, shape, classes, seed=0)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("huge", r"model\.name '.*:huge': .* parameters"),
        ("endless", r"model\.name '.*:endless': .* parameter tensors"),
        ("broken", r"model\.name '.*:broken': building it failed: RuntimeError: cannot allocate"),
    ],
)
def test_a_user_factory_is_stopped_part_way_at_a_limit(big_models: str, factory: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        meta_model(f"{big_models}:{factory}", {}, (6,), 3, seed=0)


def test_a_user_factory_within_the_limits_is_planned(big_models: str) -> None:
    model = meta_model(f"{big_models}:small", {}, (6,), 3, seed=0)
    assert ModelSize(count_parameters(model), 2) == ModelSize(21, 2)


# --- the coordinator, over a real gRPC server -----------------------------------------------

WIDE = {"model": {"name": "mlp", "args": {"hidden": [10**9]}}}
LONG = {"model": {"name": "mlp", "args": {"hidden": [1] * 50_000}}}
BIG = {"name": "x" * (MAX_SPEC_BYTES + 1)}
DEEP = '{"model": {"args": ' * 5000 + "{}" + "}}" * 5000


async def _submit_all(texts: list[str]) -> tuple[list[tuple[grpc.StatusCode, str]], int]:
    control = Control(CoordinatorCounters(CollectorRegistry()))
    server, port = create_server("127.0.0.1:0", SecurityConfig())
    coord_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(control), server)
    await server.start()
    replies = []
    try:
        async with create_channel(f"127.0.0.1:{port}", SecurityConfig()) as channel:
            stub = coord_grpc.CoordinatorStub(channel)
            for text in texts:
                try:
                    await stub.SubmitJob(coord_pb.SubmitJobRequest(spec_json=text), timeout=60)
                    replies.append((grpc.StatusCode.OK, ""))
                except grpc.aio.AioRpcError as exc:
                    replies.append((exc.code(), exc.details() or ""))
    finally:
        await server.stop(None)
    return replies, len(control.jobs.all())


def test_bad_specs_are_invalid_argument_naming_the_field_and_create_no_job() -> None:
    replies, jobs = asyncio.run(_submit_all([DEEP, json.dumps(BIG), json.dumps({"steps": 0})]))
    assert [code for code, _ in replies] == [grpc.StatusCode.INVALID_ARGUMENT] * 3, replies
    assert f"nested deeper than {MAX_SPEC_DEPTH}" in replies[0][1]
    assert f"more than the limit of {MAX_SPEC_BYTES}" in replies[1][1]
    assert "steps" in replies[2][1]
    assert jobs == 0


def test_the_coordinator_takes_any_model_without_building_it(big_models: str) -> None:
    # A model the coordinator would need terabytes for is a job like any other to it: it never
    # builds one (nor imports the module); the job's workers refuse it before allocating.
    huge = {"model": {"name": f"{big_models}:huge"}}
    replies, jobs = asyncio.run(_submit_all([json.dumps(WIDE), json.dumps(LONG), json.dumps(huge)]))
    assert replies == [(grpc.StatusCode.OK, "")] * 3
    assert jobs == 3
    assert big_models not in sys.modules


def test_over_rest_a_bad_spec_is_a_json_400_naming_the_field() -> None:
    with TestClient(create_app(Control(CoordinatorCounters(CollectorRegistry())), SecurityConfig())) as client:
        reply = client.post("/v1/jobs", json={"batch_size": 0})
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert "batch_size" in reply.json()["error"]["message"]
