"""Which shard owns which parameters.

The model's parameters, flattened and concatenated in `named_parameters()` order, form
one vector. Each shard owns one contiguous range of it, balanced by bytes. Cuts fall on
tensor boundaries when one is close to the ideal cut and inside a tensor otherwise, so a
large tensor is split across shards instead of unbalancing them. Contiguous ranges let a
worker send each shard a slice of one flat gradient buffer without gathering.

No torch here: the coordinator holds shard maps and never loads torch (about 270 MB
resident). A dtype is its name ("float32"); core/torch_dtypes.py converts for the members
that hold tensors.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from tidal.core.errors import InvalidArgumentError

# A tensor boundary within this fraction of a shard's ideal size from the ideal cut is
# preferred over splitting a tensor.
BOUNDARY_TOLERANCE = 0.1
# The parameter dtypes a shard map may hold, by name (torch's attribute names).
DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    # One of DTYPE_NAMES.
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Segment:
    """The part of one tensor that lies in one shard's range."""

    name: str
    shape: tuple[int, ...]
    # First element of the segment within the flattened tensor.
    tensor_offset: int
    # First element of the segment within the flat parameter vector.
    flat_start: int
    length: int


@dataclass(frozen=True)
class ShardMap:
    tensors: tuple[TensorInfo, ...]
    # (start, end) element range of the flat vector per shard, in shard order.
    ranges: tuple[tuple[int, int], ...]

    @property
    def num_shards(self) -> int:
        return len(self.ranges)

    @property
    def dtype(self) -> str:
        return self.tensors[0].dtype

    @property
    def total_elements(self) -> int:
        return self.ranges[-1][1]

    def tensor_starts(self) -> list[int]:
        starts, offset = [], 0
        for t in self.tensors:
            starts.append(offset)
            offset += t.numel
        return starts

    def segments(self, shard: int) -> list[Segment]:
        start, end = self.ranges[shard]
        segments = []
        for info, t_start in zip(self.tensors, self.tensor_starts(), strict=True):
            lo, hi = max(start, t_start), min(end, t_start + info.numel)
            if lo < hi:
                segments.append(Segment(info.name, info.shape, lo - t_start, lo, hi - lo))
        return segments

    def validate(self) -> None:
        """Checks the invariants a map received from elsewhere must hold."""
        if not self.tensors or not self.ranges:
            raise InvalidArgumentError("shard_map: needs at least one tensor and one range")
        if len({t.dtype for t in self.tensors}) != 1:
            raise InvalidArgumentError("shard_map.tensors: all parameters must share one dtype")
        _check_dtype(self.dtype, "shard_map.tensors")
        if len({t.name for t in self.tensors}) != len(self.tensors):
            raise InvalidArgumentError("shard_map.tensors: names must be unique")
        expected = 0
        for i, (start, end) in enumerate(self.ranges):
            if start != expected or end <= start:
                raise InvalidArgumentError(
                    f"shard_map.ranges[{i}]: [{start}, {end}) must start at {expected} and be non-empty"
                )
            expected = end
        total = sum(t.numel for t in self.tensors)
        if expected != total:
            raise InvalidArgumentError(f"shard_map.ranges: cover {expected} elements, the tensors have {total}")


def build_shard_map(tensors: Sequence[TensorInfo], num_shards: int) -> ShardMap:
    """Divides the flat parameter vector into `num_shards` ranges balanced by bytes."""
    if not tensors:
        raise InvalidArgumentError("model: has no parameters")
    if len({t.dtype for t in tensors}) != 1:
        raise InvalidArgumentError("model: all parameters must share one dtype to be sharded")
    _check_dtype(tensors[0].dtype, "model")
    total = sum(t.numel for t in tensors)
    if num_shards < 1 or num_shards > total:
        raise InvalidArgumentError(f"num_shards: must be in [1, {total}] for this model, got {num_shards}")
    boundaries = [0]
    for t in tensors:
        boundaries.append(boundaries[-1] + t.numel)
    ideal_size = total / num_shards
    cuts = [0]
    for k in range(1, num_shards):
        ideal = round(k * ideal_size)
        cut = _nearest(boundaries, ideal)
        if abs(cut - ideal) > BOUNDARY_TOLERANCE * ideal_size:
            cut = ideal
        # Every shard keeps at least one element.
        cut = min(max(cut, cuts[-1] + 1), total - (num_shards - k))
        cuts.append(cut)
    cuts.append(total)
    ranges = tuple((cuts[i], cuts[i + 1]) for i in range(num_shards))
    return ShardMap(tuple(tensors), ranges)


def _nearest(sorted_values: list[int], target: int) -> int:
    i = bisect.bisect_left(sorted_values, target)
    candidates = sorted_values[max(i - 1, 0) : i + 1]
    return min(candidates, key=lambda v: abs(v - target))


def _check_dtype(name: str, where: str) -> None:
    if name not in DTYPE_NAMES:
        raise InvalidArgumentError(f"{where}: dtype {name!r} cannot be sharded (supported: {', '.join(DTYPE_NAMES)})")
