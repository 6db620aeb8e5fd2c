"""Unit tests for tidal.core.shard_map: balanced contiguous ranges and their segments."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

# isort: split
from tidal.core.errors import InvalidArgumentError
from tidal.core.shard_map import BOUNDARY_TOLERANCE, DTYPE_NAMES, ShardMap, TensorInfo, build_shard_map
from tidal.core.torch_dtypes import dtype_name, tensor_infos, torch_dtype

F32 = "float32"


def infos(*sizes: int | tuple[int, ...], dtype: str = F32) -> list[TensorInfo]:
    return [TensorInfo(f"t{i}", s if isinstance(s, tuple) else (s,), dtype) for i, s in enumerate(sizes)]


def boundaries(tensors: Sequence[TensorInfo]) -> list[int]:
    out = [0]
    for t in tensors:
        out.append(out[-1] + t.numel)
    return out


def check_invariants(tensors: Sequence[TensorInfo], num_shards: int, shard_map: ShardMap) -> None:
    """The properties every map must have, independent of how the cuts were chosen."""
    total = sum(t.numel for t in tensors)
    ideal = total / num_shards
    assert shard_map.num_shards == num_shards
    assert shard_map.tensors == tuple(tensors)
    assert shard_map.total_elements == total
    # Contiguous, covering [0, total), every shard non-empty.
    assert shard_map.ranges[0][0] == 0
    assert shard_map.ranges[-1][1] == total
    for (_, end), (start, _) in itertools.pairwise(shard_map.ranges):
        assert end == start
    assert all(end > start for start, end in shard_map.ranges)
    shard_map.validate()
    # Balanced: every cut lies within the boundary tolerance (plus rounding) of its ideal
    # position, so no shard exceeds the ideal by more than two tolerances.
    for k, (start, _) in enumerate(shard_map.ranges[1:], start=1):
        assert abs(start - k * ideal) <= BOUNDARY_TOLERANCE * ideal + 1, (k, start, k * ideal)
    largest = max(end - start for start, end in shard_map.ranges)
    assert largest <= ideal * (1 + 2 * BOUNDARY_TOLERANCE) + 2
    # Segments reassemble every element of every tensor exactly once, at the right place.
    covered: dict[str, list[tuple[int, int]]] = {t.name: [] for t in tensors}
    starts = dict(zip((t.name for t in tensors), boundaries(tensors), strict=False))
    for shard in range(num_shards):
        lo, hi = shard_map.ranges[shard]
        flat_cursor = lo
        for seg in shard_map.segments(shard):
            assert seg.length > 0
            assert seg.flat_start == flat_cursor, "segments run in flat order without holes"
            assert seg.flat_start == starts[seg.name] + seg.tensor_offset
            assert seg.shape == next(t.shape for t in tensors if t.name == seg.name)
            covered[seg.name].append((seg.tensor_offset, seg.tensor_offset + seg.length))
            flat_cursor += seg.length
        assert flat_cursor == hi
    for t in tensors:
        expected = 0
        for lo, hi in sorted(covered[t.name]):
            assert lo == expected, f"{t.name}: gap or overlap at {lo}"
            expected = hi
        assert expected == t.numel


# --- basic maps ------------------------------------------------------------------------


def test_single_shard_owns_everything() -> None:
    tensors = infos((3, 4), 3, (2, 3))
    shard_map = build_shard_map(tensors, 1)
    assert shard_map.ranges == ((0, 21),)
    assert [s.name for s in shard_map.segments(0)] == ["t0", "t1", "t2"]
    check_invariants(tensors, 1, shard_map)


def test_one_element_per_shard() -> None:
    tensors = infos(2, 3)
    shard_map = build_shard_map(tensors, 5)
    assert shard_map.ranges == ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5))
    check_invariants(tensors, 5, shard_map)


def test_map_properties() -> None:
    tensors = infos((2, 5), 7)
    shard_map = build_shard_map(tensors, 2)
    assert shard_map.num_shards == 2
    assert shard_map.dtype == F32
    assert shard_map.total_elements == 17
    assert shard_map.tensor_starts() == [0, 10]


def test_cut_prefers_a_tensor_boundary_within_tolerance() -> None:
    # Ideal cut at 50; the boundary at 48 is within 10% of a shard (5 elements).
    shard_map = build_shard_map(infos(48, 52), 2)
    assert shard_map.ranges == ((0, 48), (48, 100))
    assert [s.name for s in shard_map.segments(0)] == ["t0"]
    assert [s.name for s in shard_map.segments(1)] == ["t1"]


def test_cut_splits_a_tensor_when_no_boundary_is_close() -> None:
    # Ideal cut at 50; the only boundary (40) is 10 elements away, more than 5.
    shard_map = build_shard_map(infos(40, 60), 2)
    assert shard_map.ranges == ((0, 50), (50, 100))
    seg = shard_map.segments(1)
    assert [(s.name, s.tensor_offset, s.length) for s in seg] == [("t1", 10, 50)]


def test_huge_tensor_is_split_across_shards() -> None:
    tensors = [
        TensorInfo("embed.bias", (10,), F32),
        TensorInfo("embed.weight", (100, 100), F32),
        TensorInfo("head.weight", (3, 10), F32),
        TensorInfo("head.bias", (3,), F32),
    ]
    shard_map = build_shard_map(tensors, 4)
    check_invariants(tensors, 4, shard_map)
    holders = [i for i in range(4) if any(s.name == "embed.weight" for s in shard_map.segments(i))]
    assert holders == [0, 1, 2, 3]
    sizes = [end - start for start, end in shard_map.ranges]
    assert max(sizes) - min(sizes) <= 2, sizes  # no boundary is near any ideal cut


def test_small_tensors_are_never_split_when_boundaries_line_up() -> None:
    tensors = infos(*([25] * 8))
    shard_map = build_shard_map(tensors, 4)
    assert shard_map.ranges == ((0, 50), (50, 100), (100, 150), (150, 200))
    for shard in range(4):
        assert all(s.tensor_offset == 0 and s.length == 25 for s in shard_map.segments(shard))


def test_zero_element_tensor_appears_in_no_segment() -> None:
    tensors = infos(10, 0, 10)
    shard_map = build_shard_map(tensors, 2)
    check_invariants(tensors, 2, shard_map)
    assert all(s.name != "t1" for shard in range(2) for s in shard_map.segments(shard))


def test_tensor_infos_follow_named_parameters() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    got = tensor_infos(list(model.named_parameters()))
    assert [t.name for t in got] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [t.shape for t in got] == [(3, 4), (3,), (2, 3), (2,)]
    assert {t.dtype for t in got} == {"float32"}
    assert sum(t.numel for t in got) == sum(p.numel() for p in model.parameters())
    assert TensorInfo("s", (), F32).numel == 1


# --- rejected inputs -------------------------------------------------------------------


@pytest.mark.parametrize("num_shards", [0, -1, 22, 1000])
def test_num_shards_outside_one_to_elements_is_rejected(num_shards: int) -> None:
    with pytest.raises(InvalidArgumentError, match="num_shards"):
        build_shard_map(infos((3, 4), 3, (2, 3)), num_shards)


def test_mixed_dtypes_are_rejected() -> None:
    tensors = [TensorInfo("a", (4,), F32), TensorInfo("b", (4,), "float64")]
    with pytest.raises(InvalidArgumentError, match="dtype"):
        build_shard_map(tensors, 1)


def test_dtype_names_are_torch_dtypes_and_back() -> None:
    for name in DTYPE_NAMES:
        assert dtype_name(torch_dtype(name)) == name
        assert torch_dtype(name).is_floating_point


def test_a_dtype_without_a_name_cannot_be_sharded() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^model parameter i: torch\.int64 cannot be sharded"):
        tensor_infos([("i", torch.zeros(2, dtype=torch.int64))])
    with pytest.raises(InvalidArgumentError, match="'int8' cannot be sharded"):
        build_shard_map([TensorInfo("a", (4,), "int8")], 1)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        torch_dtype("int8")


def test_model_without_parameters_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="no parameters"):
        build_shard_map([], 1)


def test_model_with_only_empty_tensors_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="num_shards"):
        build_shard_map(infos(0, 0), 1)


# --- validate --------------------------------------------------------------------------

TWO = (TensorInfo("a", (4,), F32), TensorInfo("b", (6,), F32))


@pytest.mark.parametrize(
    ("tensors", "ranges", "needle"),
    [
        (TWO, ((0, 4), (5, 10)), r"ranges\[1\].*must start at 4"),  # gap
        (TWO, ((0, 5), (4, 10)), r"ranges\[1\].*must start at 5"),  # overlap
        (TWO, ((1, 10),), r"ranges\[0\]"),  # does not start at 0
        (TWO, ((0, 4), (4, 4), (4, 10)), r"ranges\[1\].*non-empty"),  # empty range
        (TWO, ((0, 6), (6, 4)), r"ranges\[1\]"),  # reversed range
        (TWO, ((0, 4), (4, 9)), r"cover 9 elements, the tensors have 10"),  # short
        (TWO, ((0, 4), (4, 11)), r"cover 11 elements, the tensors have 10"),  # long
        (TWO, (), "at least one"),
        ((), ((0, 1),), "at least one"),
        ((TWO[0], TensorInfo("b", (6,), "float16")), ((0, 10),), "one dtype"),
        ((TensorInfo("a", (4,), "complex64"),), ((0, 4),), "cannot be sharded"),
        ((TWO[0], TensorInfo("a", (6,), F32)), ((0, 10),), "unique"),
    ],
    ids=[
        "gap",
        "overlap",
        "late-start",
        "empty",
        "reversed",
        "short",
        "long",
        "no-ranges",
        "no-tensors",
        "dtype",
        "unknown-dtype",
        "dup",
    ],
)
def test_validate_catches_broken_maps(
    tensors: tuple[TensorInfo, ...], ranges: tuple[tuple[int, int], ...], needle: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        ShardMap(tensors, ranges).validate()


def test_validate_accepts_built_maps() -> None:
    ShardMap(TWO, ((0, 4), (4, 10))).validate()
    ShardMap(TWO, ((0, 3), (3, 5), (5, 10))).validate()


# --- property --------------------------------------------------------------------------

shapes = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)


@settings(max_examples=150, deadline=None)
@given(
    shape_list=st.lists(shapes, min_size=1, max_size=8),
    big=st.one_of(st.none(), st.integers(500, 5000)),
    data=st.data(),
)
def test_property_random_models(shape_list: list[tuple[int, ...]], big: int | None, data: st.DataObject) -> None:
    if big is not None:
        # Sometimes one tensor dwarfs the rest.
        position = data.draw(st.integers(0, len(shape_list)))
        shape_list = [*shape_list[:position], (big,), *shape_list[position:]]
    tensors = [TensorInfo(f"p{i}", s, F32) for i, s in enumerate(shape_list)]
    total = sum(t.numel for t in tensors)
    num_shards = data.draw(st.integers(1, min(total, 16)))
    shard_map = build_shard_map(tensors, num_shards)
    check_invariants(tensors, num_shards, shard_map)
    ideal = total / num_shards
    if ideal >= 10:
        # With shards of at least ten elements no clamping happens: a cut lands on a tensor
        # boundary whenever one is within tolerance of the ideal cut, inside a tensor only
        # when none is.
        bounds = boundaries(tensors)
        for k, (cut, _) in enumerate(shard_map.ranges[1:], start=1):
            target = round(k * ideal)
            near = [b for b in bounds if abs(b - target) <= BOUNDARY_TOLERANCE * ideal]
            if near:
                assert cut in near, (k, cut, near)
            else:
                assert cut == target


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 10_000), min_size=1, max_size=6), num_shards=st.integers(1, 64))
def test_property_balanced_by_bytes(sizes: list[int], num_shards: int) -> None:
    tensors = infos(*sizes)
    total = sum(sizes)
    num_shards = min(num_shards, total)
    shard_map = build_shard_map(tensors, num_shards)
    check_invariants(tensors, num_shards, shard_map)
    assert math.fsum(e - s for s, e in shard_map.ranges) == total
