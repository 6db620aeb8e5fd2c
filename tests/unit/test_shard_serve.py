"""Serving parameters one message at a time (shard/runtime.py): every message of a serve is
of the version it started with, even when a push changes the parameters in between, and the
copy that takes is dropped with the serve; plus the shard's memory settings (shard/memory.py)."""

from __future__ import annotations

import subprocess
import sys

import torch
from prometheus_client import CollectorRegistry

from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.shard_state import ShardState
from tidal.core.spec import parse_job_spec
from tidal.shard.memory import arena_limit_wanted, limit_malloc_arenas
from tidal.shard.metrics import ShardMetrics
from tidal.shard.runtime import ShardRuntime
from tidal.transport import frames, serde
from tidal.transport.limits import CHUNK_BYTES

# Three messages' worth of parameters (CHUNK_BYTES each), over two tensors.
TENSORS = (TensorInfo("big", (2, CHUNK_BYTES // 4), "float32"), TensorInfo("small", (1000,), "float32"))
TOTAL = sum(t.numel for t in TENSORS)


def make_runtime(compression: dict | None = None) -> ShardRuntime:
    spec = parse_job_spec(
        {
            "mode": "async",
            "steps": 50,
            "num_workers": 2,
            "num_shards": 1,
            "optimizer": {"name": "sgd", "lr": 0.1},
            **({"compression": compression} if compression else {}),
        }
    )
    initial = torch.randn(TOTAL, generator=torch.Generator().manual_seed(0))
    state = ShardState(spec, 0, build_shard_map(TENSORS, 1), initial, 1, ["w0", "w1"])
    return ShardRuntime("job", state, ShardMetrics(CollectorRegistry()).for_job("job", "async", 0))


def assemble(
    runtime: ShardRuntime, messages: list[bytes], dtype: torch.dtype = torch.float32
) -> tuple[set[int], torch.Tensor]:
    """The versions the messages carry and the slice they hold."""
    out = torch.empty(TOTAL, dtype=dtype)
    assembler = serde.SliceAssembler(runtime.state.segments, 0, out, "params.chunks")
    versions = set()
    for message in messages:
        params = frames.decode_response(message).body
        versions.add(params.version)
        assembler.add(params.chunks)
    assert frames.decode_response(messages[-1]).body.last
    return versions, assembler.finish()


def push(runtime: ShardRuntime, worker: str, i: int) -> None:
    state = runtime.state
    state.push(worker, f"{worker}:{i}", state.version, 1, torch.ones(TOTAL))


def test_a_serve_keeps_its_version_when_a_push_lands_in_between() -> None:
    runtime = make_runtime()
    before = runtime.state.params.detach().clone()
    serve = runtime.serve("w0")
    first = next(serve)
    assert not runtime._frozen  # nothing changed: no copy
    push(runtime, "w1", 0)  # another stream's push: the parameters change under the serve
    assert runtime.state.version == 1
    # A copy of what the serve has not sent yet: all but the first message.
    first_unsent, rest = runtime._frozen[0]
    assert first_unsent == CHUNK_BYTES // 4 and rest.numel() == TOTAL - first_unsent
    versions, values = assemble(runtime, [first, *serve])
    assert versions == {0}
    assert torch.equal(values, before)
    assert not runtime._frozen and not runtime._sending  # the copy went with the serve
    versions, values = assemble(runtime, list(runtime.serve("w0")))
    assert versions == {1}
    assert torch.equal(values, runtime.state.params.detach())


def test_serves_of_two_versions_in_flight() -> None:
    runtime = make_runtime()
    v0 = runtime.state.params.detach().clone()
    serve0 = runtime.serve("w0")
    first0 = next(serve0)
    push(runtime, "w1", 0)
    v1 = runtime.state.params.detach().clone()
    serve1 = runtime.serve("w1")
    first1 = next(serve1)
    push(runtime, "w0", 1)
    assert sorted(runtime._frozen) == [0, 1]
    versions, values = assemble(runtime, [first1, *serve1])
    assert versions == {1} and torch.equal(values, v1)
    versions, values = assemble(runtime, [first0, *serve0])
    assert versions == {0} and torch.equal(values, v0)
    assert not runtime._frozen and not runtime._sending


def test_a_serve_closed_early_leaves_nothing_behind() -> None:
    runtime = make_runtime()
    serve = runtime.serve("w0")
    next(serve)
    push(runtime, "w1", 0)
    assert runtime._frozen
    serve.close()
    assert not runtime._frozen and not runtime._sending


def test_bf16_serves_and_the_job_result_in_float32() -> None:
    runtime = make_runtime({"codec": "bf16"})
    held = runtime.state.params.detach().clone()
    versions, values = assemble(runtime, list(runtime.serve("w0")), torch.bfloat16)
    assert versions == {0} and torch.equal(values, held.to(torch.bfloat16))
    versions, values = assemble(runtime, list(runtime.params()))
    assert versions == {0} and torch.equal(values, held)


def test_window_groups_encode_what_encoded_chunks_do() -> None:
    runtime = make_runtime()
    flat, segments = runtime.state.params.detach(), runtime.state.segments
    groups = serde.window_groups(4, segments, 0)
    assert len(groups) == 3
    lazily = [frames.encode_params(0, serde.encode_windows(flat, g), i == 2) for i, g in enumerate(groups)]
    grouped = list(serde.group_encoded(serde.encoded_chunks(flat, segments, 0)))
    at_once = [frames.encode_params(0, g, i == len(grouped) - 1) for i, g in enumerate(grouped)]
    assert lazily == at_once


def test_malloc_arenas_are_capped_unless_the_environment_decides() -> None:
    assert not arena_limit_wanted({"MALLOC_ARENA_MAX": "4"})
    assert not arena_limit_wanted({"TIDAL_MALLOC_TUNING": "0"})
    assert arena_limit_wanted({}) and arena_limit_wanted({"TIDAL_MALLOC_TUNING": "1"})
    assert not limit_malloc_arenas(1, wanted=False)
    # In a child: the cap applies to the whole process.
    code = "from tidal.shard.memory import limit_malloc_arenas; print(limit_malloc_arenas(1, wanted=True))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True"
