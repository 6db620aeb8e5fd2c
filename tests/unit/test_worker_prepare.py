"""A worker prepares a new job (worker/prepare.py): it loads the data and builds the model with
its own code, checks everything it will need before the coordinator plans the job, and
announces a layout every worker of the job agrees on."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.layout import DIGEST_HEX_DIGITS
from tidal.core.plan import job_layout
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.spec import parse_job_spec
from tidal.worker.prepare import check_layout, in_daemon_thread, prepare_job

SPEC = {"model": {"name": "mlp", "args": {"hidden": [8]}}, "dataset": {"name": "synthetic"}, "seed": 5}


def test_workers_of_one_job_announce_the_same_layout_and_digest() -> None:
    spec = parse_job_spec(SPEC)
    a = prepare_job("j", spec, (0, 2), None)
    b = prepare_job("j", spec, (1, 2), None)
    assert a.layout == b.layout
    assert len(a.layout.init_digest) == DIGEST_HEX_DIGITS
    # The layout is the one the shard map is planned from.
    assert job_layout(spec).tensors == a.layout.tensors
    other_seed = prepare_job("j", parse_job_spec({**SPEC, "seed": 6}), (0, 2), None)
    assert other_seed.layout.tensors == a.layout.tensors
    assert other_seed.layout.init_digest != a.layout.init_digest


@pytest.mark.parametrize(
    ("change", "device", "field"),
    [
        ({"objective": "weighted_mse"}, None, "objective"),
        ({"objective": "tidal_no_such_module:loss"}, None, "objective"),
        ({"device": "cuda:0"}, None, "device"),
        ({}, "cuda", "--device"),
        ({"model": {"name": "mlp", "args": {"hidden": [10**9]}}}, None, "model.args.hidden"),
    ],
)
def test_what_the_worker_cannot_run_is_refused_while_it_prepares(
    change: dict[str, object], device: str | None, field: str
) -> None:
    if torch.cuda.is_available() and "cuda" in f"{change}{device}":
        pytest.fail("this test expects a machine without CUDA, as CI is")
    with pytest.raises(InvalidArgumentError, match=rf"^{field}"):
        prepare_job("j", parse_job_spec({**SPEC, **change}), (0, 1), None, device)


def test_a_model_that_differs_from_the_shard_map_is_refused_naming_the_parameter() -> None:
    prepared = prepare_job("j", parse_job_spec(SPEC), (0, 1), None)
    check_layout(prepared.layout, build_shard_map(prepared.layout.tensors, 2))
    first, *rest = prepared.layout.tensors
    other = build_shard_map([TensorInfo(first.name, (*first.shape[:-1], 99), first.dtype), *rest], 1)
    with pytest.raises(InvalidArgumentError, match=rf"^layout: .*'{first.name}' .*99"):
        check_layout(prepared.layout, other)


def test_user_code_runs_in_a_daemon_thread_and_its_result_or_error_comes_back() -> None:
    async def go() -> None:
        assert await in_daemon_thread("t", lambda: threading.current_thread().daemon) is True

        def broken() -> None:
            raise InvalidArgumentError("dataset.name: broken")

        with pytest.raises(InvalidArgumentError, match="broken"):
            await in_daemon_thread("t", broken)

    asyncio.run(go())
