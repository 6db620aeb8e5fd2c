"""Unit tests for tidal.transport.serde: dtypes, shard maps and tensor chunks on the wire."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest
import torch

# isort: split
from tidal.core.errors import InvalidArgumentError
from tidal.core.shard_map import ShardMap, TensorInfo, build_shard_map
from tidal.core.torch_dtypes import dtype_name
from tidal.transport.limits import CHUNK_BYTES
from tidal.transport.serde import (
    SliceAssembler,
    dtype_from_proto,
    dtype_to_proto,
    group_chunks,
    shard_map_from_proto,
    shard_map_to_proto,
    slice_to_chunks,
)
from tidal.v1 import common_pb2 as common_pb

WIRE_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
BIG = 1_500_000  # float32 elements: 6 MB, more than 4 MiB


def random_bits(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Arbitrary bit patterns (NaN payloads, -0.0, subnormals included) of `dtype`."""
    size = torch.empty((), dtype=dtype).element_size()
    int_type = {2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
    info = torch.iinfo(int_type)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(info.min, info.max, (n,), generator=gen, dtype=int_type).view(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def model_map(dtype: torch.dtype = torch.float32, big: int = 0, num_shards: int = 3) -> ShardMap:
    name = dtype_name(dtype)
    tensors = [
        TensorInfo("conv.weight", (4, 3, 3, 3), name),
        TensorInfo("conv.bias", (4,), name),
        TensorInfo("fc.weight", (10, 37), name),
        TensorInfo("fc.bias", (10,), name),
        TensorInfo("scale", (), name),
    ]
    if big:
        tensors.insert(2, TensorInfo("embed.weight", (big,), name))
    return build_shard_map(tensors, num_shards)


def round_trip(
    shard_map: ShardMap, flat: torch.Tensor, chunk_bytes: int, shuffle: bool = False
) -> list[list[common_pb.TensorChunk]]:
    """Sends every shard's slice through chunks and reassembles it; returns the chunks."""
    all_chunks = []
    for shard in range(shard_map.num_shards):
        start, end = shard_map.ranges[shard]
        segments = shard_map.segments(shard)
        chunks = list(slice_to_chunks(flat[start:end], segments, start, chunk_bytes))
        # Chunks cross a real serialisation, as on the wire.
        chunks = [common_pb.TensorChunk.FromString(c.SerializeToString()) for c in chunks]
        if shuffle:
            random.Random(shard).shuffle(chunks)
        out = torch.full((end - start,), float("nan"), dtype=flat.dtype)
        assembler = SliceAssembler(segments, start, out, "push.chunks")
        assembler.add(chunks)
        result = assembler.finish()
        assert result is out
        assert torch.equal(bits(result), bits(flat[start:end])), f"shard {shard} differs"
        all_chunks.append(chunks)
    return all_chunks


# --- dtypes ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", WIRE_DTYPES, ids=str)
def test_dtype_round_trip(dtype: torch.dtype) -> None:
    value = dtype_to_proto(dtype)
    assert value != common_pb.DTYPE_UNSPECIFIED
    assert dtype_from_proto(value) is dtype


def test_wire_dtypes_are_distinct() -> None:
    assert len({dtype_to_proto(d) for d in WIRE_DTYPES}) == len(WIRE_DTYPES)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64], ids=str)
def test_unsupported_dtype_cannot_travel(dtype: torch.dtype) -> None:
    with pytest.raises(InvalidArgumentError, match="dtype"):
        dtype_to_proto(dtype)


@pytest.mark.parametrize("value", [common_pb.DTYPE_UNSPECIFIED, 99, -1])
def test_unknown_dtype_enum_names_the_field(value: int) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^grad\[3\]\.dtype:"):
        dtype_from_proto(value, "grad[3].dtype")


# --- shard maps ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", WIRE_DTYPES, ids=str)
@pytest.mark.parametrize("num_shards", [1, 3, 7])
def test_shard_map_round_trip(dtype: torch.dtype, num_shards: int) -> None:
    original = model_map(dtype, big=1000, num_shards=num_shards)
    wire = shard_map_to_proto(original).SerializeToString()
    decoded = shard_map_from_proto(common_pb.ShardMap.FromString(wire))
    assert decoded == original
    assert [r.shard for r in shard_map_to_proto(original).ranges] == list(range(num_shards))
    for shard in range(num_shards):
        assert decoded.segments(shard) == original.segments(shard)


def _valid_proto() -> common_pb.ShardMap:
    return shard_map_to_proto(
        build_shard_map([TensorInfo("a", (2, 3), "float32"), TensorInfo("b", (4,), "float32")], 2)
    )


def _break_negative_dim(msg: common_pb.ShardMap) -> None:
    msg.tensors[1].shape[0] = -4


def _break_dtype(msg: common_pb.ShardMap) -> None:
    msg.tensors[0].dtype = common_pb.DTYPE_UNSPECIFIED


def _break_mixed_dtype(msg: common_pb.ShardMap) -> None:
    msg.tensors[0].dtype = common_pb.DTYPE_FLOAT64


def _break_gap(msg: common_pb.ShardMap) -> None:
    msg.ranges[1].start += 1


def _break_overlap(msg: common_pb.ShardMap) -> None:
    msg.ranges[1].start -= 1


def _break_total(msg: common_pb.ShardMap) -> None:
    msg.ranges[1].end += 1


def _break_no_ranges(msg: common_pb.ShardMap) -> None:
    del msg.ranges[:]


def _break_no_tensors(msg: common_pb.ShardMap) -> None:
    del msg.tensors[:]


def _break_duplicate_name(msg: common_pb.ShardMap) -> None:
    msg.tensors[1].name = "a"


@pytest.mark.parametrize(
    ("breaker", "needle"),
    [
        (_break_negative_dim, r"shard_map\.tensors\[1\]\.shape"),
        (_break_dtype, r"shard_map\.tensors\[0\]\.dtype"),
        (_break_mixed_dtype, r"shard_map\.tensors.*one dtype"),
        (_break_gap, r"shard_map\.ranges\[1\]"),
        (_break_overlap, r"shard_map\.ranges\[1\]"),
        (_break_total, r"shard_map\.ranges"),
        (_break_no_ranges, "shard_map"),
        (_break_no_tensors, "shard_map"),
        (_break_duplicate_name, r"shard_map\.tensors.*unique"),
    ],
    ids=lambda v: v.__name__.removeprefix("_break_") if callable(v) else "",
)
def test_invalid_shard_map_is_rejected(breaker: Callable[[common_pb.ShardMap], None], needle: str) -> None:
    msg = _valid_proto()
    shard_map_from_proto(msg)  # valid before breaking it
    breaker(msg)
    with pytest.raises(InvalidArgumentError, match=needle):
        shard_map_from_proto(msg)


# --- chunks ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", WIRE_DTYPES, ids=str)
@pytest.mark.parametrize("chunk_bytes", [1, 6, 64, CHUNK_BYTES], ids=lambda b: f"chunk{b}")
def test_chunks_round_trip_bit_exact_for_every_shard(dtype: torch.dtype, chunk_bytes: int) -> None:
    shard_map = model_map(dtype, big=0, num_shards=4)
    flat = random_bits(shard_map.total_elements, dtype, seed=1)
    per_shard = round_trip(shard_map, flat, chunk_bytes)
    size = flat.element_size()
    per_chunk = max(1, chunk_bytes // size)
    for chunks in per_shard:
        assert all(0 < len(c.data) <= per_chunk * size for c in chunks)
        assert all(c.dtype == dtype_to_proto(dtype) for c in chunks)


def test_assembler_reads_bfloat16_chunks() -> None:
    """The receiving side handles bfloat16 (chunks built by hand from the raw bits)."""
    shard_map = build_shard_map([TensorInfo("a", (5,), "bfloat16")], 1)
    values = torch.tensor([1.5, -2.0, 0.0, 3.25, 1e30], dtype=torch.bfloat16)
    chunk = common_pb.TensorChunk(
        name="a",
        dtype=common_pb.DTYPE_BFLOAT16,
        shape=[5],
        offset=0,
        data=values.view(torch.int16).numpy().tobytes(),
    )
    out = torch.zeros(5, dtype=torch.bfloat16)
    assembler = SliceAssembler(shard_map.segments(0), 0, out, "params")
    assembler.add([chunk])
    assert torch.equal(bits(assembler.finish()), bits(values))


@pytest.mark.parametrize("chunk_bytes", [CHUNK_BYTES, 4096], ids=["default", "4KiB"])
def test_tensor_larger_than_4mib_splits_into_chunks_and_round_trips(chunk_bytes: int) -> None:
    shard_map = model_map(torch.float32, big=BIG, num_shards=3)
    flat = random_bits(shard_map.total_elements, torch.float32, seed=2)
    per_shard = round_trip(shard_map, flat, chunk_bytes, shuffle=True)
    big_chunks = [c for chunks in per_shard for c in chunks if c.name == "embed.weight"]
    assert len(big_chunks) >= -(-BIG * 4 // chunk_bytes)
    assert len(big_chunks) > 1
    assert all(len(c.data) <= chunk_bytes for chunks in per_shard for c in chunks)
    assert all(tuple(c.shape) == (BIG,) for c in big_chunks), "chunks carry the full tensor shape"
    # The big tensor is cut across shards, and its pieces cover it exactly once.
    spans = sorted((c.offset, c.offset + len(c.data) // 4) for c in big_chunks)
    expected = 0
    for lo, hi in spans:
        assert lo == expected
        expected = hi
    assert expected == BIG
    holders = [i for i, chunks in enumerate(per_shard) if any(c.name == "embed.weight" for c in chunks)]
    assert len(holders) >= 2


def test_chunk_offsets_are_within_the_tensor_not_the_slice() -> None:
    shard_map = build_shard_map([TensorInfo("a", (10,), "float32"), TensorInfo("b", (30,), "float32")], 2)
    start, end = shard_map.ranges[1]
    assert start == 20  # shard 1 begins in the middle of "b"
    flat = torch.arange(40, dtype=torch.float32)
    chunks = list(slice_to_chunks(flat[start:end], shard_map.segments(1), start, chunk_bytes=16))
    assert [(c.name, c.offset, len(c.data) // 4) for c in chunks] == [("b", o, 4) for o in (10, 14, 18, 22, 26)]
    assert torch.frombuffer(bytearray(chunks[0].data), dtype=torch.float32).tolist() == [20, 21, 22, 23]


def test_chunks_of_a_non_contiguous_view_are_correct() -> None:
    shard_map = build_shard_map([TensorInfo("a", (6,), "float32")], 1)
    flat = torch.arange(12, dtype=torch.float32)[::2]
    chunks = list(slice_to_chunks(flat, shard_map.segments(0), 0))
    assert torch.frombuffer(bytearray(chunks[0].data), dtype=torch.float32).tolist() == [0, 2, 4, 6, 8, 10]


# --- grouping --------------------------------------------------------------------------


@pytest.mark.parametrize("max_bytes", [4, 40, 100, 1000, CHUNK_BYTES])
def test_group_chunks_keeps_groups_within_max_bytes_and_order(max_bytes: int) -> None:
    shard_map = model_map(torch.float32, num_shards=1)
    flat = torch.randn(shard_map.total_elements)
    chunks = list(slice_to_chunks(flat, shard_map.segments(0), 0, chunk_bytes=min(max_bytes, 64)))
    groups = list(group_chunks(chunks, max_bytes))
    assert all(groups)
    assert all(sum(len(c.data) for c in g) <= max_bytes for g in groups)
    assert [c for g in groups for c in g] == chunks
    # Greedy: a group is closed only when the next chunk would not fit.
    for g, nxt in itertools.pairwise(groups):
        assert sum(len(c.data) for c in g) + len(nxt[0].data) > max_bytes


def test_group_chunks_of_nothing_is_no_group() -> None:
    assert list(group_chunks([])) == []


def test_group_chunks_puts_an_oversized_chunk_alone() -> None:
    chunks = [common_pb.TensorChunk(name=n, data=b"\0" * size) for n, size in [("a", 4), ("b", 100), ("c", 4)]]
    groups = list(group_chunks(chunks, max_bytes=8))
    assert [[c.name for c in g] for g in groups] == [["a"], ["b"], ["c"]]


# --- assembler errors ------------------------------------------------------------------


class Fixture:
    """Shard 1 of a two-tensor model: it owns "a"[8:10] and all of "b"."""

    def __init__(self) -> None:
        self.map = build_shard_map([TensorInfo("a", (2, 5), "float32"), TensorInfo("b", (6,), "float32")], 2)
        self.start, self.end = self.map.ranges[1]
        assert (self.start, self.end) == (8, 16)
        self.segments = self.map.segments(1)
        self.flat = torch.arange(16, dtype=torch.float32)
        self.chunks = list(slice_to_chunks(self.flat[self.start : self.end], self.segments, self.start, 8))
        self.out = torch.full((self.end - self.start,), -1.0)
        self.assembler = SliceAssembler(self.segments, self.start, self.out, "grad")

    def chunk(self, **fields: object) -> common_pb.TensorChunk:
        base = {"name": "b", "dtype": common_pb.DTYPE_FLOAT32, "shape": [6], "offset": 0, "data": b"\0" * 8}
        return common_pb.TensorChunk(**{**base, **fields})


@pytest.fixture
def fx() -> Fixture:
    return Fixture()


def test_fixture_assembles(fx: Fixture) -> None:
    assert [(c.name, c.offset, len(c.data) // 4) for c in fx.chunks] == [
        ("a", 8, 2),
        ("b", 0, 2),
        ("b", 2, 2),
        ("b", 4, 2),
    ]
    fx.assembler.add(fx.chunks)
    assert torch.equal(fx.assembler.finish(), fx.flat[8:])


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"name": "c"}, r"^grad\[0\]\.name: unknown tensor 'c'"),
        ({"name": ""}, r"^grad\[0\]\.name"),
        ({"dtype": common_pb.DTYPE_FLOAT64}, r"^grad\[0\]\.dtype"),
        ({"dtype": common_pb.DTYPE_FLOAT16}, r"^grad\[0\]\.dtype"),
        ({"dtype": common_pb.DTYPE_UNSPECIFIED}, r"^grad\[0\]\.dtype"),
        ({"dtype": 42}, r"^grad\[0\]\.dtype"),
        ({"shape": [3, 2]}, r"^grad\[0\]\.shape"),
        ({"shape": []}, r"^grad\[0\]\.shape"),
        ({"data": b"\0" * 7}, r"^grad\[0\]\.data: 7 bytes"),
        ({"data": b"\0" * 2}, r"^grad\[0\]\.data"),
        ({"offset": 5}, r"^grad\[0\]\.offset"),  # [5, 7) overruns "b" (6 elements)
        ({"offset": 6}, r"^grad\[0\]\.offset"),
        ({"offset": -1}, r"^grad\[0\]\.offset"),
        ({"data": b"\0" * 28}, r"^grad\[0\]\.offset"),  # 7 elements of a 6-element tensor
        ({"data": b""}, r"^grad\[0\]\."),  # an empty chunk is refused
        # "a" is split: this shard owns only elements [8, 10) of it.
        ({"name": "a", "shape": [2, 5], "offset": 0}, r"^grad\[0\]\.offset.*\[8, 10\)"),
        ({"name": "a", "shape": [2, 5], "offset": 7}, r"^grad\[0\]\.offset"),
        ({"name": "a", "shape": [2, 5], "offset": 9}, r"^grad\[0\]\.offset"),  # [9, 11) overruns
    ],
)
def test_assembler_rejects_a_bad_chunk_naming_the_field_before_writing(
    fx: Fixture, fields: dict[str, object], needle: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        fx.assembler.add([fx.chunk(**fields)])
    assert torch.equal(fx.out, torch.full((8,), -1.0)), "nothing may be written before validation"


def test_assembler_error_index_counts_accepted_chunks(fx: Fixture) -> None:
    fx.assembler.add(fx.chunks[:2])
    with pytest.raises(InvalidArgumentError, match=r"^grad\[2\]\.name"):
        fx.assembler.add([fx.chunk(name="nope")])


def test_assembler_accepts_chunks_in_any_order_and_in_several_calls(fx: Fixture) -> None:
    fx.assembler.add(fx.chunks[3:])
    fx.assembler.add([fx.chunks[1], fx.chunks[0], fx.chunks[2]])
    assert torch.equal(fx.assembler.finish(), fx.flat[8:])


@pytest.mark.parametrize("missing", [0, 1, 2], ids=["first", "second", "third"])
def test_finish_reports_a_gap_for_a_missing_chunk(fx: Fixture, missing: int) -> None:
    fx.assembler.add([c for i, c in enumerate(fx.chunks) if i != missing])
    with pytest.raises(InvalidArgumentError, match=r"^grad: chunks leave a gap"):
        fx.assembler.finish()


def test_finish_reports_a_missing_last_chunk(fx: Fixture) -> None:
    fx.assembler.add(fx.chunks[:-1])
    with pytest.raises(InvalidArgumentError, match=r"^grad: chunks cover 6 of 8 elements"):
        fx.assembler.finish()


def test_finish_without_chunks_is_refused(fx: Fixture) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^grad:"):
        fx.assembler.finish()


@pytest.mark.parametrize("duplicate", [0, 1, 3])
def test_finish_reports_an_overlap_for_a_duplicated_chunk(fx: Fixture, duplicate: int) -> None:
    fx.assembler.add([*fx.chunks, fx.chunks[duplicate]])
    with pytest.raises(InvalidArgumentError, match=r"^grad: chunks leave an? overlap"):
        fx.assembler.finish()


def test_finish_reports_a_partial_overlap(fx: Fixture) -> None:
    # Covers b[0:6] once with three chunks plus b[1:3] again: same element count as a gap-free set.
    fx.assembler.add([fx.chunks[0], fx.chunk(offset=0, data=b"\0" * 24), fx.chunk(offset=1)])
    with pytest.raises(InvalidArgumentError, match="overlap"):
        fx.assembler.finish()


def test_shard_map_from_proto_checks_range_indices() -> None:
    msg = shard_map_to_proto(build_shard_map([TensorInfo("w", (10,), "float32")], 2))
    msg.ranges[1].shard = 0
    with pytest.raises(InvalidArgumentError, match=r"shard_map\.ranges\[1\]\.shard"):
        shard_map_from_proto(msg)


def test_empty_chunk_is_refused_as_empty_data() -> None:
    shard_map = build_shard_map([TensorInfo("w", (10,), "float32")], 1)
    chunk = next(iter(slice_to_chunks(torch.zeros(10), shard_map.segments(0), 0)))
    chunk.data = b""
    assembler = SliceAssembler(shard_map.segments(0), 0, torch.zeros(10), "push.chunks")
    with pytest.raises(InvalidArgumentError, match=r"push\.chunks\[0\]\.data: empty"):
        assembler.add([chunk])
