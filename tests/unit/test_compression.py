"""Top-k sparsification with error feedback, and sparse chunks on the wire."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import CollectorRegistry

from tidal.core.compression import TopK, params_wire_dtype, wire_dtype
from tidal.core.errors import InvalidArgumentError
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.shard_state import ShardState
from tidal.core.spec import CompressionSpec, parse_job_spec
from tidal.shard.metrics import ShardMetrics
from tidal.shard.runtime import ShardRuntime
from tidal.transport import frames
from tidal.transport.serde import SliceAssembler, dtype_from_proto, slice_to_sparse_chunks

TENSORS = [TensorInfo("a", (40, 50), "float32"), TensorInfo("b", (30,), "float32")]


def test_wire_dtypes() -> None:
    assert wire_dtype(CompressionSpec()) is None
    assert wire_dtype(CompressionSpec(codec="fp16")) is torch.float16
    assert wire_dtype(CompressionSpec(codec="bf16")) is torch.bfloat16
    assert wire_dtype(CompressionSpec(codec="topk")) is None


def test_parameters_travel_down_in_bf16_only_under_bf16_compression() -> None:
    # fp16 would overflow parameters beyond 65504; bf16 has float32's exponent range.
    assert params_wire_dtype(CompressionSpec()) is None
    assert params_wire_dtype(CompressionSpec(codec="fp16")) is None
    assert params_wire_dtype(CompressionSpec(codec="bf16")) is torch.bfloat16
    assert params_wire_dtype(CompressionSpec(codec="topk")) is None


def _runtime(codec: str) -> tuple[ShardRuntime, torch.Tensor]:
    spec = parse_job_spec({"mode": "async", "num_workers": 1, "compression": {"codec": codec}})
    shard_map = build_shard_map(TENSORS, 1)
    initial = torch.randn(shard_map.total_elements, generator=torch.Generator().manual_seed(0)) * 1e3
    state = ShardState(spec, 0, shard_map, initial, 1, ["w0"])
    return ShardRuntime("job", state, ShardMetrics(CollectorRegistry()).for_job("job", "async", 0)), initial


def _received(messages: list[bytes], out: torch.Tensor, wire: torch.dtype | None) -> set[torch.dtype]:
    """Decodes parameter messages into `out` as a worker does; returns the dtypes that travelled."""
    shard_map = build_shard_map(TENSORS, 1)
    assembler = SliceAssembler(shard_map.segments(0), 0, out, "params.chunks", wire)
    dtypes = set()
    for message in messages:
        frame = frames.decode_response(message)
        assert frame.kind == "params"
        dtypes |= {dtype_from_proto(c.dtype) for c in frame.body.chunks}
        assembler.add(frame.body.chunks)
    assembler.finish()
    return dtypes


@pytest.mark.parametrize("codec", ["none", "fp16", "bf16"])
def test_workers_receive_parameters_in_the_wire_dtype_and_the_shard_keeps_float32(codec: str) -> None:
    runtime, initial = _runtime(codec)
    wire = params_wire_dtype(runtime.state.spec.compression)
    served = torch.empty_like(initial)
    dtypes = _received(runtime.serve("w0"), served, wire)
    assert dtypes == {wire or torch.float32}
    # The worker holds float32: the values it got, widened (bf16-rounded under bf16).
    assert served.dtype is torch.float32
    expected = initial if wire is None else initial.to(wire).float()
    assert torch.equal(served, expected)
    # The master copy on the shard, and what ReadParameters returns, stay float32 and exact.
    assert torch.equal(runtime.state.params.detach(), initial)
    final = torch.empty_like(initial)
    assert _received(runtime.params(), final, None) == {torch.float32}
    assert torch.equal(final, initial)


def test_topk_picks_the_largest_entries_per_range_and_keeps_the_rest() -> None:
    topk = TopK(10, ratio=0.2)
    grad = torch.tensor([0.1, -5.0, 0.2, 3.0, 0.0, 1.0, 0.5, -0.4, 9.0, 0.3])
    ranges = [(0, 5), (5, 10)]
    picked = topk.select(grad, ranges)
    assert [p.tolist() for p in picked] == [[1], [3]]  # |-5| in the first range, 9 (index 8) in the second
    topk.sent(ranges, picked)
    expected = grad.clone()
    expected[1] = expected[8] = 0.0
    torch.testing.assert_close(topk.residual, expected)


def test_error_feedback_delivers_every_gradient_eventually() -> None:
    """Summed over pushes, what was sent plus what is kept equals what was computed."""
    torch.manual_seed(0)
    topk = TopK(100, ratio=0.05)
    ranges = [(0, 60), (60, 100)]
    total_grad, total_sent = torch.zeros(100), torch.zeros(100)
    for _ in range(30):
        grad = torch.randn(100)
        total_grad += grad
        picked = topk.select(grad, ranges)
        for (start, _end), idx in zip(ranges, picked, strict=True):
            total_sent[start + idx] += topk.residual[start + idx]
        topk.sent(ranges, picked)
    torch.testing.assert_close(total_sent + topk.residual, total_grad)


@pytest.mark.parametrize("chunk_bytes", [16, 1 << 20])
def test_sparse_chunks_round_trip_and_zero_everything_else(chunk_bytes: int) -> None:
    shard_map = build_shard_map(TENSORS, 2)
    for shard in range(2):
        start, end = shard_map.ranges[shard]
        values = torch.randn(end - start)
        idx = torch.randperm(end - start)[: (end - start) // 7].sort().values
        chunks = list(slice_to_sparse_chunks(values, idx, shard_map.segments(shard), start, chunk_bytes))
        out = torch.full((end - start,), 123.0)  # stale content must be overwritten
        assembler = SliceAssembler(shard_map.segments(shard), start, out, "push.chunks")
        assembler.add(chunks)
        assembler.finish()
        expected = torch.zeros(end - start)
        expected[idx] = values[idx]
        assert torch.equal(out, expected)


def _one_sparse_chunk():
    shard_map = build_shard_map(TENSORS, 1)
    chunks = list(slice_to_sparse_chunks(torch.arange(2030.0), torch.tensor([3, 7, 2010]), shard_map.segments(0), 0))
    return shard_map, chunks


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (torch.tensor([7, 3, 9], dtype=torch.int32), "strictly increasing"),
        (torch.tensor([3, 3, 9], dtype=torch.int32), "strictly increasing"),
        (torch.tensor([-1, 3, 9], dtype=torch.int32), "strictly increasing"),
        (torch.tensor([3, 7, 5000], dtype=torch.int32), "strictly increasing"),
        (torch.tensor([3], dtype=torch.int32), "4 bytes each"),
    ],
)
def test_bad_sparse_indices_are_refused_naming_the_field(indices: torch.Tensor, message: str) -> None:
    shard_map, chunks = _one_sparse_chunk()
    first = chunks[0]
    first.indices = indices.numpy().tobytes()
    if len(indices) == 3:
        first.data = torch.zeros(3).numpy().tobytes()
    assembler = SliceAssembler(shard_map.segments(0), 0, torch.zeros(2030), "push.chunks")
    with pytest.raises(InvalidArgumentError, match=rf"push\.chunks\[0\]\.indices: .*{message}"):
        assembler.add([first])


def test_sparse_span_outside_the_segment_is_refused() -> None:
    shard_map, chunks = _one_sparse_chunk()
    chunks[0].span = 10**6
    assembler = SliceAssembler(shard_map.segments(0), 0, torch.zeros(2030), "push.chunks")
    with pytest.raises(InvalidArgumentError, match=r"push\.chunks\[0\]\.offset"):
        assembler.add([chunks[0]])
