"""The planner child (tidal/planner.py): the coordinator plans a job in a child process, which
gives the in-process layout, reports a bad spec as the same typed error naming the field, and
is killed at its timeout, when cancelled, or when it passes its memory cap."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tidal.core.errors import InternalError, InvalidArgumentError, PermissionDeniedError, UnavailableError
from tidal.core.model_source import ENV_MODEL_MODULES
from tidal.core.plan import job_layout
from tidal.core.shard_map import ShardMap
from tidal.core.spec import parse_job_spec
from tidal.planner import MAX_LAYOUT_BYTES, Planner, layout_from_json, layout_to_json, plan_job

_MODULE = "tidal_test_planner_models"
_SMALL_DATA = {"name": "synthetic", "args": {"num_samples": 64}}


@pytest.fixture
def factories(tmp_path: Path) -> dict[str, str]:
    """The environment of a planner child that can import the test's user factories."""
    (tmp_path / f"{_MODULE}.py").write_text(
        textwrap.dedent(
            """
            import os, pathlib, resource, sys, time
            import torch
            from torch import nn

            def noisy(input_shape, num_classes):
                print("a factory that prints")
                os.write(1, b"and writes to descriptor 1")
                return nn.Linear(input_shape[-1], num_classes)

            def hang(input_shape, num_classes, started):
                pathlib.Path(started).write_text(str(os.getpid()))
                time.sleep(3600)

            def greedy(input_shape, num_classes):
                soft, _ = resource.getrlimit(resource.RLIMIT_AS)
                if soft == resource.RLIM_INFINITY:
                    raise RuntimeError("no memory cap")
                bytearray(soft)  # more than is left under the cap
                return nn.Linear(1, 1)

            def crash(input_shape, num_classes):
                print("about to crash", file=sys.stderr, flush=True)
                os._exit(7)

            def long_names(input_shape, num_classes):
                model = nn.Module()
                for i in range(2000):
                    model.register_parameter("p" * 10_000 + str(i), nn.Parameter(torch.empty(1)))
                return model
            """
        )
    )
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def _spec(name: str, args: dict[str, Any] | None = None) -> Any:
    return parse_job_spec({"model": {"name": f"{_MODULE}:{name}", "args": args or {}}, "dataset": _SMALL_DATA})


def _plan(spec: Any, **kwargs: Any) -> ShardMap:
    return asyncio.run(plan_job(spec, **kwargs))


def _planner_children() -> list[int]:
    """Live processes this one started that run the planner child."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"tidal.planner_child" in cmdline:
            found.append(int(proc.name))
    return found


def _wait_for(path: Path, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)


def _wait_dead(pid: int, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while _alive(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still runs")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_valid_specs_layout_is_the_in_process_one() -> None:
    for data in ({}, {"model": {"name": "mlp", "args": {"hidden": [16, 8]}}, "num_shards": 3}):
        spec = parse_job_spec(data)
        assert _plan(spec) == job_layout(spec)


def test_an_oversized_model_is_invalid_argument_naming_the_field() -> None:
    spec = parse_job_spec({"model": {"name": "mlp", "args": {"hidden": [10**9]}}})
    with pytest.raises(InvalidArgumentError, match=r"^model\.args\.hidden: .* parameters"):
        _plan(spec)


def test_more_shards_than_parameters_is_invalid_argument() -> None:
    spec = parse_job_spec({"model": {"name": "mlp", "args": {"hidden": []}}, "num_shards": 256})
    with pytest.raises(InvalidArgumentError, match=r"^num_shards: "):
        _plan(spec)


def test_a_module_outside_the_allowed_packages_is_permission_denied(factories: dict[str, str]) -> None:
    with pytest.raises(PermissionDeniedError, match=r"^model\.name: module 'tidal_test_planner_models'"):
        _plan(_spec("noisy"), env={**factories, ENV_MODEL_MODULES: "somewhere.else"})


def test_what_a_factory_prints_does_not_corrupt_the_layout(factories: dict[str, str]) -> None:
    shard_map = _plan(_spec("noisy"), env=factories)
    assert [(t.name, t.dtype) for t in shard_map.tensors] == [("weight", "float32"), ("bias", "float32")]


def test_a_factory_that_hangs_is_killed_at_the_timeout(factories: dict[str, str], tmp_path: Path) -> None:
    started = tmp_path / "started"
    with pytest.raises(UnavailableError, match=r"longer than 10s; the planner was stopped"):
        _plan(_spec("hang", {"started": str(started)}), env=factories, timeout_s=10)
    if started.exists():  # the factory itself ran, and is gone with its process
        assert not _alive(int(started.read_text()))


def test_a_cancelled_plan_kills_the_child(factories: dict[str, str], tmp_path: Path) -> None:
    started = tmp_path / "started"

    async def run() -> int:
        task = asyncio.create_task(plan_job(_spec("hang", {"started": str(started)}), env=factories))
        waiting = asyncio.create_task(asyncio.to_thread(_wait_for, started))
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), task.result()
        await waiting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(started.read_text())

    pid = asyncio.run(run())
    assert not _alive(pid)


def test_a_factory_past_the_memory_cap_fails_cleanly(factories: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^model\.name '.*:greedy': building it failed: MemoryError"):
        _plan(_spec("greedy"), env=factories)


def test_a_crashed_child_is_internal_with_its_stderr(factories: dict[str, str]) -> None:
    with pytest.raises(InternalError, match=r"exited with status 7: .*about to crash"):
        _plan(_spec("crash"), env=factories)


def test_the_childs_output_is_bounded(factories: dict[str, str]) -> None:
    with pytest.raises(InternalError, match=f"more than {MAX_LAYOUT_BYTES} bytes"):
        _plan(_spec("long_names"), env=factories)


def test_the_layout_codec_round_trips_and_refuses_malformed_output() -> None:
    tensors = job_layout(parse_job_spec({})).tensors
    assert layout_from_json(layout_to_json(tensors)) == tensors
    for bad in ("", "[]", '{"tensors": [{"name": "w", "shape": [-1], "dtype": "float32"}]}', '{"tensors": 3}'):
        with pytest.raises(InternalError, match="planner: malformed layout"):
            layout_from_json(bad)


def test_one_child_plans_spec_after_spec_and_a_failed_one_is_replaced(factories: dict[str, str]) -> None:
    async def run() -> None:
        async with Planner(env=factories, timeout_s=30) as planner:
            await planner.start()
            first = planner.pid
            assert first is not None and first in _planner_children()
            small = parse_job_spec({})
            assert await planner.plan(small) == job_layout(small)
            with pytest.raises(InvalidArgumentError, match=r"^model\.args\.hidden"):
                await planner.plan(parse_job_spec({"model": {"name": "mlp", "args": {"hidden": [10**9]}}}))
            assert await planner.plan(small) == job_layout(small)
            assert planner.pid == first  # a bad spec is an answer, not a failure
            with pytest.raises(InternalError, match="exited with status 7"):
                await planner.plan(_spec("crash"))
            assert not _alive(first)
            assert await planner.plan(small) == job_layout(small)
            second = planner.pid
            assert second is not None and second != first
        assert not _alive(second)

    asyncio.run(run())


def test_kill_stops_the_child_without_awaiting_and_aclose_reaps_it() -> None:
    async def run() -> tuple[int, str, str]:
        planner = Planner()
        await planner.start()
        pid = planner.pid
        assert pid is not None
        planner.kill()  # what a shutdown path that cannot await calls
        await asyncio.to_thread(_wait_dead, pid)
        tail = await planner.aclose()
        return pid, tail, await planner.aclose()

    pid, tail, again = asyncio.run(run())
    assert not _alive(pid)
    assert isinstance(tail, str) and again == "(no output)"
