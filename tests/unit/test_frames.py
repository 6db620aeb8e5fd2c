"""The hand-framed Exchange messages are protobuf: byte for byte what the generated classes
write, and read back from anything the generated classes write (transport/frames.py)."""

from __future__ import annotations

import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from tidal.core.errors import InvalidArgumentError
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.torch_dtypes import dtype_name
from tidal.transport import frames, serde
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import shard_pb2 as shard_pb

_int64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
_uint64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
_names = st.text(max_size=20)
_payload = st.binary(max_size=64)


@st.composite
def _chunks(draw: st.DrawFn) -> common_pb.TensorChunk:
    return common_pb.TensorChunk(
        name=draw(_names),
        dtype=draw(st.sampled_from([0, 1, 2, 3, 4])),
        shape=draw(st.lists(_int64, max_size=4)),
        offset=draw(_int64),
        data=draw(_payload),
        indices=draw(_payload),
        span=draw(_int64),
        shared=draw(st.none() | st.builds(common_pb.SharedRegion, offset=_uint64, length=_uint64)),
    )


def _encode_chunk(c: common_pb.TensorChunk) -> frames.Encoded:
    shared = (c.shared.offset, c.shared.length) if c.HasField("shared") else None
    return frames.encode_chunk(c.name, c.dtype, list(c.shape), c.offset, c.data, c.indices, c.span, shared)


def _same_chunk(view: frames.ChunkView, msg: common_pb.TensorChunk) -> None:
    assert view.name == msg.name
    assert view.dtype == msg.dtype
    assert list(view.shape) == list(msg.shape)
    assert (view.offset, view.span) == (msg.offset, msg.span)
    assert bytes(view.data) == msg.data
    assert bytes(view.indices) == msg.indices
    assert view.shared == ((msg.shared.offset, msg.shared.length) if msg.HasField("shared") else None)


@settings(max_examples=150, deadline=None)
@given(
    push_id=_names,
    base_version=_int64,
    epoch=_uint64,
    clock=_int64,
    num_samples=_int64,
    chunks=st.lists(_chunks(), max_size=3),
    last=st.booleans(),
)
def test_push_encoding_is_what_protobuf_writes_and_reads_back(
    push_id: str,
    base_version: int,
    epoch: int,
    clock: int,
    num_samples: int,
    chunks: list[common_pb.TensorChunk],
    last: bool,
) -> None:
    generated = shard_pb.ExchangeRequest(
        push=shard_pb.PushChunk(
            push_id=push_id,
            base_version=base_version,
            membership_epoch=epoch,
            clock=clock,
            num_samples=num_samples,
            chunks=chunks,
            last=last,
        )
    )
    encoded = [_encode_chunk(c) for c in chunks]
    ours = frames.encode_push(push_id, base_version, epoch, clock, num_samples, encoded, last)
    assert ours == generated.SerializeToString()
    assert shard_pb.ExchangeRequest.FromString(ours) == generated
    frame = frames.decode_request(generated.SerializeToString())
    assert (frame.kind, frame.nbytes) == ("push", generated.ByteSize())
    push = frame.body
    assert (push.push_id, push.base_version, push.membership_epoch) == (push_id, base_version, epoch)
    assert (push.clock, push.num_samples, push.last) == (clock, num_samples, last)
    assert len(push.chunks) == len(chunks)
    for view, msg in zip(push.chunks, chunks, strict=True):
        _same_chunk(view, msg)


@settings(max_examples=100, deadline=None)
@given(version=_int64, chunks=st.lists(_chunks(), max_size=3), last=st.booleans())
def test_params_encoding_is_what_protobuf_writes_and_reads_back(
    version: int, chunks: list[common_pb.TensorChunk], last: bool
) -> None:
    generated = shard_pb.ExchangeResponse(params=shard_pb.Params(version=version, chunks=chunks, last=last))
    ours = frames.encode_params(version, [_encode_chunk(c) for c in chunks], last)
    assert ours == generated.SerializeToString()
    frame = frames.decode_response(ours)
    assert frame.kind == "params"
    assert (frame.body.version, frame.body.last) == (version, last)
    for view, msg in zip(frame.body.chunks, chunks, strict=True):
        _same_chunk(view, msg)
    as_read = shard_pb.ReadParametersResponse.FromString(frames.read_parameters_response(ours))
    assert as_read == shard_pb.ReadParametersResponse(params=generated.params)


def test_reader_accepts_unpacked_shapes_unknown_fields_and_any_field_order() -> None:
    chunk = common_pb.TensorChunk(name="w", dtype=common_pb.DTYPE_FLOAT32, shape=[3, 4], offset=2, data=b"\0" * 8)
    # Fields reversed, shape unpacked (wire type 0), an unknown varint field 15 and an unknown
    # fixed64 field 14: all valid protobuf that a hand-rolled reader could get wrong.
    body = (
        bytes([0x2A, 8]) + b"\0" * 8  # data
        + bytes([0x20, 2])  # offset
        + bytes([0x18, 3, 0x18, 4])  # shape, unpacked
        + bytes([0x78, 7])  # field 15, varint
        + bytes([0x71]) + b"\1" * 8  # field 14, fixed64
        + bytes([0x10, 1])  # dtype
        + bytes([0x0A, 1]) + b"w"  # name
    )  # fmt: skip
    parsed = common_pb.TensorChunk.FromString(body)
    parsed.DiscardUnknownFields()
    assert parsed == chunk
    params = bytes([0x12, len(body)]) + body + bytes([0x08, 5, 0x18, 1])  # chunks, version, last
    response = bytes([0x1A, len(params)]) + params
    frame = frames.decode_response(response)
    assert (frame.kind, frame.body.version, frame.body.last) == ("params", 5, True)
    _same_chunk(frame.body.chunks[0], chunk)


@pytest.mark.parametrize(
    "message",
    [
        shard_pb.ExchangeRequest(open=shard_pb.ExchangeOpen(job_id="j", worker_id="w", membership_epoch=3)),
        shard_pb.ExchangeRequest(pull=shard_pb.Pull(min_version=7)),
        shard_pb.ExchangeRequest(),
    ],
)
def test_requests_without_tensors_decode_to_the_generated_messages(message: shard_pb.ExchangeRequest) -> None:
    frame = frames.decode_request(message.SerializeToString())
    kind = message.WhichOneof("kind")
    assert frame.kind == kind
    if kind is not None:
        assert frame.body == getattr(message, kind)


def test_responses_without_tensors_decode_to_the_generated_messages() -> None:
    ack = shard_pb.PushAck(push_id="p", outcome=shard_pb.PUSH_OUTCOME_APPLIED, version=4, staleness=1)
    frame = frames.decode_response(shard_pb.ExchangeResponse(ack=ack).SerializeToString())
    assert (frame.kind, frame.body) == ("ack", ack)
    message = shard_pb.ExchangeResponse(ack=ack)
    assert frames.serialize(message) == message.SerializeToString()
    assert frames.serialize(b"raw") == b"raw"


@pytest.mark.parametrize(
    "garbage",
    [
        bytes([0x1A, 10, 0x0A]),  # push longer than the message
        bytes([0x1A, 2, 0x0A, 0x80]),  # truncated varint inside
        bytes([0x1A, 0x80]),  # truncated length
        bytes([0x1A, 3, 0x0A, 1, 0xFF]),  # push_id not UTF-8
        bytes([0x1B]),  # group wire type
    ],
)
def test_malformed_messages_raise_decode_errors(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        frames.decode_request(garbage)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_tensors_round_trip_bit_exact_through_the_framed_path(dtype: torch.dtype) -> None:
    name = dtype_name(dtype)
    tensors = [TensorInfo("a", (7, 5), name), TensorInfo("b", (300,), name), TensorInfo("c", (3,), name)]
    shard_map = build_shard_map(tensors, 2)
    flat = torch.randn(shard_map.total_elements).to(dtype)
    for shard in range(2):
        start, end = shard_map.ranges[shard]
        segments = shard_map.segments(shard)
        groups = list(serde.group_encoded(serde.encoded_chunks(flat[start:end], segments, start, 64), 200))
        messages = [frames.encode_params(9, g, i == len(groups) - 1) for i, g in enumerate(groups)]
        out = torch.full((end - start,), float("nan"), dtype=dtype)
        assembler = serde.SliceAssembler(segments, start, out, "params.chunks")
        for raw in messages:
            frame = frames.decode_response(raw)
            assert frame.body.version == 9
            assembler.add(frame.body.chunks)
            # The generated classes read the same messages to the same values.
            generated = shard_pb.ExchangeResponse.FromString(raw).params.chunks
            assert [c.data for c in generated] == [bytes(v.data) for v in frame.body.chunks]
        assert torch.equal(assembler.finish(), flat[start:end])


def test_sparse_chunks_round_trip_through_the_framed_path() -> None:
    shard_map = build_shard_map([TensorInfo("w", (100,), "float32")], 1)
    flat = torch.zeros(100)
    picked = torch.tensor([3, 40, 41, 99])
    flat[picked] = torch.tensor([1.0, -2.0, 3.0, 4.0])
    chunks = list(serde.encoded_chunks(flat, shard_map.segments(0), 0, 64, sparse=picked))
    frame = frames.decode_request(frames.encode_push("p", 0, 1, 0, 1, chunks, True))
    out = torch.full((100,), 7.0)
    assembler = serde.SliceAssembler(shard_map.segments(0), 0, out, "push.chunks")
    assembler.add(frame.body.chunks)
    assert torch.equal(assembler.finish(), flat)


def test_a_framed_chunk_is_checked_like_a_generated_one() -> None:
    shard_map = build_shard_map([TensorInfo("w", (10,), "float32")], 1)
    bad = frames.encode_chunk("w", common_pb.DTYPE_FLOAT32, [10], 8, memoryview(bytes(16)))
    frame = frames.decode_request(frames.encode_push("p", 0, 1, 0, 1, [bad], True))
    assembler = serde.SliceAssembler(shard_map.segments(0), 0, torch.zeros(10), "push.chunks")
    with pytest.raises(InvalidArgumentError, match=r"push.chunks\[0\].offset"):
        assembler.add(frame.body.chunks)
