"""Tensor <-> protobuf conversion: the only module that knows both torch and the wire.

Pairs of `x_to_proto` / `x_from_proto`; proto classes are imported under the `pb`
aliases so they never shadow domain types. Tensors travel as `TensorChunk`s of at most
`CHUNK_BYTES` of payload; a receiver checks every chunk against the shard map (name,
dtype, shape, range) before it writes, and checks at the end that the chunks covered its
range exactly once.

The data plane sends `encoded_chunks` (hand-framed, transport/frames.py) and reads
`frames.ChunkView`s; `slice_to_chunks` and friends build the same chunks as generated
messages, for generated-stub clients, tests and the benchmark's reference path.

Shard maps hold no tensors: their pair lives in transport/shard_map_serde.py, without torch,
so that the coordinator never loads it; it is re-exported here for the members.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.shard_map import Segment
from tidal.core.torch_dtypes import torch_dtype
from tidal.transport import frames, shard_map_serde, shm
from tidal.transport.limits import CHUNK_BYTES, MAX_CHUNKS_PER_MESSAGE
from tidal.v1 import common_pb2 as common_pb

# The wire's dtype enum by torch dtype, from the one table of names (transport/shard_map_serde.py).
_DTYPE_TO_PROTO = {torch_dtype(name): value for name, value in shard_map_serde.DTYPE_NAME_TO_PROTO.items()}
_PROTO_TO_DTYPE = {v: k for k, v in _DTYPE_TO_PROTO.items()}
# The members' one serde module names the shard map pair too.
shard_map_to_proto = shard_map_serde.shard_map_to_proto
shard_map_from_proto = shard_map_serde.shard_map_from_proto


def dtype_to_proto(dtype: torch.dtype) -> int:
    try:
        return _DTYPE_TO_PROTO[dtype]
    except KeyError:
        raise InvalidArgumentError(f"dtype: {dtype} cannot travel on the wire") from None


def dtype_from_proto(value: int, field: str = "dtype") -> torch.dtype:
    try:
        return _PROTO_TO_DTYPE[value]
    except KeyError:
        raise InvalidArgumentError(f"{field}: unsupported dtype enum value {value}") from None


def _as_bytes(t: torch.Tensor) -> memoryview:
    # Viewed as raw bytes first: numpy has no bfloat16, and bytes are all the wire needs.
    return memoryview(t.detach().contiguous().view(torch.uint8).numpy())


@dataclass(frozen=True, slots=True)
class Window:
    """One dense chunk of a shard's slice: elements [start, start + length) of the slice, which
    are elements [offset, offset + length) of tensor `name`."""

    name: str
    shape: tuple[int, ...]
    start: int
    offset: int
    length: int


def _windows(
    element_size: int, segments: Sequence[Segment], range_start: int, chunk_bytes: int
) -> Iterator[tuple[Segment, int, int, int]]:
    """The chunk windows of a shard's slice: (segment, start in the slice, element offset in
    the tensor, length), each of at most `chunk_bytes` of dense payload. Dense and sparse
    chunks share them, so both tile the slice the same way."""
    per_chunk = max(1, chunk_bytes // element_size)
    for seg in segments:
        base = seg.flat_start - range_start
        for lo in range(0, seg.length, per_chunk):
            yield seg, base + lo, seg.tensor_offset + lo, min(per_chunk, seg.length - lo)


def window_groups(
    element_size: int,
    segments: Sequence[Segment],
    range_start: int,
    max_bytes: int = CHUNK_BYTES,
    max_chunks: int = MAX_CHUNKS_PER_MESSAGE,
) -> list[list[Window]]:
    """The dense chunk windows of a shard's slice (those `encoded_chunks` cuts), packed into
    messages of at most `max_bytes` of payload and `max_chunks` chunks: what a sender encodes
    one message at a time (`encode_windows`)."""
    groups: list[list[Window]] = []
    group: list[Window] = []
    size = 0
    for seg, start, offset, length in _windows(element_size, segments, range_start, max_bytes):
        nbytes = length * element_size
        if group and (size + nbytes > max_bytes or len(group) >= max_chunks):
            groups.append(group)
            group, size = [], 0
        group.append(Window(seg.name, tuple(seg.shape), start, offset, length))
        size += nbytes
    if group:
        groups.append(group)
    return groups


def encode_windows(
    flat: torch.Tensor, windows: Sequence[Window], dtype: torch.dtype | None = None, base: int = 0
) -> list[frames.Encoded]:
    """The chunks of `windows` of a slice, `flat` holding its elements from `base` on, in
    `dtype` (default: `flat`'s), encoded for the fast path: payloads are views of `flat` (or
    of a converted copy of the window alone)."""
    dtype = dtype or flat.dtype
    code = dtype_to_proto(dtype)
    chunks = []
    for w in windows:
        values = flat[w.start - base : w.start - base + w.length]
        chunks.append(frames.encode_chunk(w.name, code, w.shape, w.offset, _as_bytes(values.to(dtype))))
    return chunks


def slice_to_chunks(
    flat: torch.Tensor, segments: Sequence[Segment], range_start: int, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[common_pb.TensorChunk]:
    """Cuts a shard's flat slice (`flat[0]` is element `range_start` of the model's flat
    vector) into chunks of at most `chunk_bytes` of payload."""
    dtype = dtype_to_proto(flat.dtype)
    for seg, start, offset, length in _windows(flat.element_size(), segments, range_start, chunk_bytes):
        data = bytes(_as_bytes(flat[start : start + length]))
        yield common_pb.TensorChunk(name=seg.name, dtype=dtype, shape=seg.shape, offset=offset, data=data)


def slice_to_sparse_chunks(
    flat: torch.Tensor,
    indices: torch.Tensor,
    segments: Sequence[Segment],
    range_start: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[common_pb.TensorChunk]:
    """Sends only `flat[indices]` (sorted positions within the slice), as sparse chunks whose
    spans tile the slice exactly like dense chunks do, so the receiver's coverage check holds."""
    dtype = dtype_to_proto(flat.dtype)
    for seg, start, offset, length in _windows(flat.element_size(), segments, range_start, chunk_bytes):
        first, last = torch.searchsorted(indices, torch.tensor([start, start + length])).tolist()
        picked = indices[first:last]
        yield common_pb.TensorChunk(
            name=seg.name,
            dtype=dtype,
            shape=seg.shape,
            offset=offset,
            data=bytes(_as_bytes(flat[picked])),
            indices=bytes(_as_bytes((picked - start).to(torch.int32))),
            span=length,
        )


def encoded_chunks(
    flat: torch.Tensor,
    segments: Sequence[Segment],
    range_start: int,
    chunk_bytes: int = CHUNK_BYTES,
    sparse: torch.Tensor | None = None,
) -> Iterator[frames.Encoded]:
    """The chunks of `slice_to_chunks` (or, given the sorted positions `sparse`, of
    `slice_to_sparse_chunks`) encoded for the fast path; dense payloads are views of `flat`,
    copied only when their message is joined."""
    dtype = dtype_to_proto(flat.dtype)
    for seg, start, offset, length in _windows(flat.element_size(), segments, range_start, chunk_bytes):
        if sparse is None:
            yield frames.encode_chunk(seg.name, dtype, seg.shape, offset, _as_bytes(flat[start : start + length]))
            continue
        first, last = torch.searchsorted(sparse, torch.tensor([start, start + length])).tolist()
        picked = sparse[first:last]
        data, indices = _as_bytes(flat[picked]), _as_bytes((picked - start).to(torch.int32))
        yield frames.encode_chunk(seg.name, dtype, seg.shape, offset, data, indices, length)


def shared_chunks(dtype: torch.dtype, segments: Sequence[Segment], range_start: int) -> list[list[frames.Encoded]]:
    """One chunk per tensor segment of a shard's slice, its payload in a shared-memory segment
    that holds the slice in `dtype` right after the header (transport/shm.py), grouped into
    messages of at most `MAX_CHUNKS_PER_MESSAGE` chunks."""
    whole = [Window(s.name, tuple(s.shape), s.flat_start - range_start, s.tensor_offset, s.length) for s in segments]
    chunks = placed_windows(whole, dtype)
    return [chunks[i : i + MAX_CHUNKS_PER_MESSAGE] for i in range(0, len(chunks), MAX_CHUNKS_PER_MESSAGE)]


def placed_windows(windows: Sequence[Window], dtype: torch.dtype) -> list[frames.Encoded]:
    """The chunks of `windows` as headers whose payloads lie in a block laid out like a
    shared-memory segment (the slice in `dtype` right after the header): a bulk channel that
    sends each message's payload right after it (transport/bulk.py, piecewise)."""
    code, size = dtype_to_proto(dtype), dtype.itemsize
    return [
        frames.encode_chunk(
            w.name, code, w.shape, w.offset, b"", shared=(shm.HEADER_BYTES + w.start * size, w.length * size)
        )
        for w in windows
    ]


def elements_of(windows: Sequence[Window]) -> tuple[int, int]:
    """The elements [start, end) of the slice that a message's windows (in slice order) cover."""
    return windows[0].start, windows[-1].start + windows[-1].length


def group_encoded(
    chunks: Iterable[frames.Encoded], max_bytes: int = CHUNK_BYTES, max_chunks: int = MAX_CHUNKS_PER_MESSAGE
) -> Iterator[list[frames.Encoded]]:
    """Packs encoded chunks into groups of at most `max_bytes` and `max_chunks` (one group per
    message: a receiver refuses a message of more chunks)."""
    group: list[frames.Encoded] = []
    size = 0
    for chunk in chunks:
        if group and (size + chunk.size > max_bytes or len(group) >= max_chunks):
            yield group
            group, size = [], 0
        group.append(chunk)
        size += chunk.size
    if group:
        yield group


def group_chunks(
    chunks: Iterable[common_pb.TensorChunk], max_bytes: int = CHUNK_BYTES, max_chunks: int = MAX_CHUNKS_PER_MESSAGE
) -> Iterator[list[common_pb.TensorChunk]]:
    """Packs chunks into groups of at most `max_bytes` payload and `max_chunks` chunks (one
    group per message)."""
    group: list[common_pb.TensorChunk] = []
    size = 0
    for chunk in chunks:
        if group and (size + len(chunk.data) > max_bytes or len(group) >= max_chunks):
            yield group
            group, size = [], 0
        group.append(chunk)
        size += len(chunk.data)
    if group:
        yield group


class SliceAssembler:
    """Writes received chunks into `out`, the flat slice [range_start, range_start+numel).

    Every chunk is validated before it is written; `finish` checks exact coverage. The
    caller passes a scratch buffer when the destination must stay untouched on error.
    Chunks may arrive in `out`'s dtype or in `wire_dtype` (a compressed gradient), and are
    widened on the copy.
    """

    def __init__(
        self,
        segments: Sequence[Segment],
        range_start: int,
        out: torch.Tensor,
        field: str,
        wire_dtype: torch.dtype | None = None,
    ) -> None:
        self._accepted = {out.dtype, wire_dtype or out.dtype}
        self._by_name = {s.name: s for s in segments}
        self._range_start = range_start
        self._out = out
        self._field = field
        self._written: list[tuple[int, int]] = []
        self._chunks_seen = 0

    @property
    def seen(self) -> int:
        """Chunks checked so far."""
        return self._chunks_seen

    def add(self, chunks: Iterable[common_pb.TensorChunk | frames.ChunkView]) -> None:
        for chunk in chunks:
            start, values = self.check(chunk)
            self._out[start : start + values.numel()].copy_(values)
            self._written.append((start, start + values.numel()))

    def check(self, chunk: common_pb.TensorChunk | frames.ChunkView) -> tuple[int, torch.Tensor]:
        """Validates one chunk without writing it: where it starts in the slice and its values,
        dense (a sparse chunk's zeros filled in), in the dtype it travelled in."""
        # Position among all chunks of this push or pull, so an error points at the chunk.
        where = f"{self._field}[{self._chunks_seen}]"
        self._chunks_seen += 1
        seg = self._by_name.get(chunk.name)
        if seg is None:
            raise InvalidArgumentError(f"{where}.name: unknown tensor {chunk.name!r} for this shard")
        dtype = dtype_from_proto(chunk.dtype, f"{where}.dtype")
        if dtype not in self._accepted:
            accepted = " or ".join(sorted(str(d) for d in self._accepted))
            raise InvalidArgumentError(f"{where}.dtype: {chunk.name} travels as {accepted}, got {dtype}")
        if tuple(chunk.shape) != seg.shape:
            raise InvalidArgumentError(
                f"{where}.shape: {chunk.name} has shape {list(seg.shape)}, got {list(chunk.shape)}"
            )
        size = dtype.itemsize
        sparse = chunk.span > 0 or bool(chunk.indices)
        if not chunk.data and not sparse:
            raise InvalidArgumentError(f"{where}.data: empty")
        if len(chunk.data) % size:
            raise InvalidArgumentError(f"{where}.data: {len(chunk.data)} bytes is not a multiple of {size}")
        count = len(chunk.data) // size
        span = chunk.span if sparse else count
        if span <= 0 or chunk.offset < seg.tensor_offset or chunk.offset + span > seg.tensor_offset + seg.length:
            raise InvalidArgumentError(
                f"{where}.offset: elements [{chunk.offset}, {chunk.offset + span}) of {chunk.name} "
                f"are outside this shard's [{seg.tensor_offset}, {seg.tensor_offset + seg.length})"
            )
        start = seg.flat_start - self._range_start + (chunk.offset - seg.tensor_offset)
        values = _frombuffer(chunk.data, dtype) if chunk.data else torch.empty(0, dtype=dtype)
        if sparse:
            positions = _sparse_positions(chunk.indices, count, span, where)
            dense = torch.zeros(span, dtype=dtype)
            dense[positions] = values
            values = dense
        return start, values

    def finish(self) -> torch.Tensor:
        expected = 0
        for lo, hi in sorted(self._written):
            if lo != expected:
                problem = "overlap" if lo < expected else "gap"
                raise InvalidArgumentError(f"{self._field}: chunks leave a {problem} at element {min(lo, expected)}")
            expected = hi
        if expected != self._out.numel():
            raise InvalidArgumentError(f"{self._field}: chunks cover {expected} of {self._out.numel()} elements")
        return self._out


def _sparse_positions(raw: bytes | memoryview, count: int, span: int, where: str) -> torch.Tensor:
    """Checks a sparse chunk's indices: one int32 per value, strictly increasing, inside the span."""
    if len(raw) != 4 * count:
        raise InvalidArgumentError(f"{where}.indices: {len(raw)} bytes for {count} values (4 bytes each)")
    if count == 0:
        return torch.empty(0, dtype=torch.long)
    positions = _frombuffer(raw, torch.int32).long()
    if int(positions[0]) < 0 or int(positions[-1]) >= span or (count > 1 and bool((positions.diff() <= 0).any())):
        raise InvalidArgumentError(f"{where}.indices: must be strictly increasing within [0, {span})")
    return positions


def _frombuffer(data: bytes | memoryview, dtype: torch.dtype) -> torch.Tensor:
    # Read-only is fine: the view is copied out at once. Silence torch's one-time warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(data, dtype=dtype)
