"""The data plane's fast path: Exchange messages in protobuf's wire encoding, written and read
by hand around the tensor bytes.

Through the generated classes a chunk's bytes are copied three times on the way out (tensor
to `bytes`, into the message, `SerializeToString`) and twice on the way in, and every byte is
walked by the protobuf runtime. Here a push or a params message is a few header bytes plus
the raw payload: encoding costs one copy (the final join) and decoding none (chunks are
`memoryview` slices of the received bytes, which `torch.frombuffer` reads in place).

What is written is byte for byte what `SerializeToString` makes of the same message (fields
in number order, proto3 defaults omitted, packed repeated fields), and the reader accepts any
valid encoding of the messages (fields in any order, unpacked repeated fields, unknown fields),
so generated clients and servers interoperate with this path. Messages without tensors
(open, pull, ack, opened) go through the generated classes. One liberty: when the same
message field occurs twice on the wire, protobuf merges the two, this reader keeps the last
(no protobuf encoder writes that for these messages).

A field added to PushChunk, Params or TensorChunk in the protos must be added here too.

Field numbers are those of protos/tidal/v1/shard.proto and common.proto; tests check both
directions against the generated classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from tidal.transport.limits import MAX_CHUNKS_PER_MESSAGE
from tidal.v1 import shard_pb2 as shard_pb

EXCHANGE_METHOD = "/tidal.v1.ParameterShard/Exchange"

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_U64 = 1 << 64
_EMPTY = memoryview(b"")

# ExchangeRequest / ExchangeResponse: the oneof `kind`.
# An `init` (4) is a PushChunk too: the shard's initial parameters, sent as a push is.
_REQUEST_KINDS = {1: ("open", shard_pb.ExchangeOpen), 2: ("pull", shard_pb.Pull), 3: ("push", None), 4: ("init", None)}
_RESPONSE_KINDS = {1: ("opened", shard_pb.ExchangeOpened), 2: ("ack", shard_pb.PushAck), 3: ("params", None)}


# --- encoding -------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if value < 0:  # int64/int32/enum: ten bytes of two's complement
        value += _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _int_field(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(value) if value else b""


def _len_prefix(number: int, length: int) -> bytes:
    return _key(number, _LEN) + _varint(length)


@dataclass
class Encoded:
    """Pieces of one encoded message, joined only when the message is sent."""

    parts: list[bytes | memoryview] = field(default_factory=list)
    size: int = 0

    def add(self, *pieces: bytes | memoryview) -> None:
        for piece in pieces:
            if len(piece):
                self.parts.append(piece)
                self.size += len(piece)

    def nested(self, number: int, inner: Encoded) -> None:
        """Appends `inner` as the length-delimited field `number` (always written, even empty,
        as protobuf writes a set message field)."""
        self.add(_len_prefix(number, inner.size))
        self.parts += inner.parts
        self.size += inner.size

    def join(self) -> bytes:
        return b"".join(self.parts)


def encode_chunk(
    name: str,
    dtype: int,
    shape: Sequence[int],
    offset: int,
    data: memoryview | bytes,
    indices: memoryview | bytes = b"",
    span: int = 0,
    shared: tuple[int, int] | None = None,
) -> Encoded:
    """A TensorChunk; `data` and `indices` are referenced, not copied. `shared` is the
    (offset, length) of a payload in shared memory, sent instead of `data`."""
    chunk = Encoded()
    raw_name = name.encode()
    if raw_name:
        chunk.add(_len_prefix(1, len(raw_name)), raw_name)
    chunk.add(_int_field(2, dtype))
    if shape:
        packed = b"".join(_varint(d) for d in shape)
        chunk.add(_len_prefix(3, len(packed)), packed)
    chunk.add(_int_field(4, offset))
    if len(data):
        chunk.add(_len_prefix(5, len(data)), data)
    if len(indices):
        chunk.add(_len_prefix(6, len(indices)), indices)
    chunk.add(_int_field(7, span))
    if shared is not None:
        region = Encoded()
        region.add(_int_field(1, shared[0]), _int_field(2, shared[1]))
        chunk.nested(8, region)
    return chunk


def encode_push(
    push_id: str,
    base_version: int,
    membership_epoch: int,
    clock: int,
    num_samples: int,
    chunks: Sequence[Encoded],
    last: bool,
    *,
    init: bool = False,
) -> bytes:
    """An ExchangeRequest carrying one PushChunk: a gradient push, or (`init`) the shard's
    initial parameters."""
    push = Encoded()
    raw_id = push_id.encode()
    if raw_id:
        push.add(_len_prefix(1, len(raw_id)), raw_id)
    push.add(_int_field(2, base_version), _int_field(3, membership_epoch), _int_field(4, clock))
    push.add(_int_field(5, num_samples))
    for chunk in chunks:
        push.nested(6, chunk)
    push.add(_int_field(7, int(last)))
    request = Encoded()
    request.nested(4 if init else 3, push)
    return request.join()


def encode_params(version: int, chunks: Sequence[Encoded], last: bool) -> bytes:
    """An ExchangeResponse carrying one Params message."""
    params = Encoded()
    params.add(_int_field(1, version))
    for chunk in chunks:
        params.nested(2, chunk)
    params.add(_int_field(3, int(last)))
    response = Encoded()
    response.nested(3, params)
    return response.join()


def read_parameters_response(exchange_response: bytes) -> bytes:
    """The Params of an encoded ExchangeResponse (field 3) as a ReadParametersResponse
    (field 1): both keys are one byte, so only the key changes."""
    if exchange_response[:1] != _key(3, _LEN):
        raise ValueError("not an encoded ExchangeResponse carrying params")
    return _key(1, _LEN) + exchange_response[1:]


def serialize(message: Any) -> bytes:
    """The Exchange serializer, both directions: pre-encoded bytes as they are, generated
    messages through protobuf."""
    return message if isinstance(message, bytes) else message.SerializeToString()


# --- decoding -------------------------------------------------------------------------


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise DecodeError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of every field: an int for varints, a memoryview
    slice for length-delimited fields; fixed-width fields are skipped."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos)
            yield number, wire_type, value
        elif wire_type == _LEN:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise DecodeError("truncated length-delimited field")
            yield number, wire_type, buf[pos : pos + length]
            pos += length
        elif wire_type in (_I64, _I32):
            pos += 8 if wire_type == _I64 else 4
            if pos > end:
                raise DecodeError("truncated fixed-width field")
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")


def _signed(value: int) -> int:
    """int64/int32/enum fields arrive as unsigned 64-bit two's complement."""
    return value - _U64 if value >= 1 << 63 else value


def _text(value: memoryview) -> str:
    try:
        return str(value, "utf-8")
    except UnicodeDecodeError:
        raise DecodeError("string field is not valid UTF-8") from None


@dataclass(slots=True)
class ChunkView:
    """A received TensorChunk (same field names); `data` and `indices` are views of the
    message's bytes. `shared` is the SharedRegion as (offset, length), None if absent; the
    receiver resolves it into `data` (transport/shm.py)."""

    name: str = ""
    dtype: int = 0
    shape: list[int] = field(default_factory=list)
    offset: int = 0
    data: memoryview = _EMPTY
    indices: memoryview = _EMPTY
    span: int = 0
    shared: tuple[int, int] | None = None


@dataclass(slots=True)
class PushView:
    """A received PushChunk (same field names)."""

    push_id: str = ""
    base_version: int = 0
    membership_epoch: int = 0
    clock: int = 0
    num_samples: int = 0
    chunks: list[ChunkView] = field(default_factory=list)
    last: bool = False


@dataclass(slots=True)
class ParamsView:
    """A received Params message (same field names)."""

    version: int = 0
    chunks: list[ChunkView] = field(default_factory=list)
    last: bool = False


@dataclass(slots=True)
class Frame:
    """One received Exchange message: which member of the oneof `kind` is set (None if
    none), its value (a generated message, or a view for pushes and params) and the size of
    the whole message in bytes."""

    kind: str | None
    body: Any
    nbytes: int


def _chunk(buf: memoryview) -> ChunkView:
    chunk = ChunkView()
    for number, wire_type, value in _fields(buf):
        if number == 1 and wire_type == _LEN:
            chunk.name = _text(value)
        elif number == 2 and wire_type == _VARINT:
            chunk.dtype = _signed(value)
        elif number == 3 and wire_type == _LEN:  # packed
            pos = 0
            while pos < len(value):
                dim, pos = _read_varint(value, pos)
                chunk.shape.append(_signed(dim))
        elif number == 3 and wire_type == _VARINT:  # unpacked
            chunk.shape.append(_signed(value))
        elif number == 4 and wire_type == _VARINT:
            chunk.offset = _signed(value)
        elif number == 5 and wire_type == _LEN:
            chunk.data = value
        elif number == 6 and wire_type == _LEN:
            chunk.indices = value
        elif number == 7 and wire_type == _VARINT:
            chunk.span = _signed(value)
        elif number == 8 and wire_type == _LEN:
            chunk.shared = _region(value)
    return chunk


def _region(buf: memoryview) -> tuple[int, int]:
    offset = length = 0
    for number, wire_type, value in _fields(buf):
        if number == 1 and wire_type == _VARINT:
            offset = value
        elif number == 2 and wire_type == _VARINT:
            length = value
    return offset, length


def _check_room(chunks: list[ChunkView], field: str) -> None:
    # Checked before each chunk is parsed: a message of a million tiny chunks costs 256 of them.
    if len(chunks) >= MAX_CHUNKS_PER_MESSAGE:
        raise DecodeError(f"{field}: more than {MAX_CHUNKS_PER_MESSAGE} chunks in one message")


def _push(buf: memoryview) -> PushView:
    push = PushView()
    for number, wire_type, value in _fields(buf):
        if number == 1 and wire_type == _LEN:
            push.push_id = _text(value)
        elif number == 2 and wire_type == _VARINT:
            push.base_version = _signed(value)
        elif number == 3 and wire_type == _VARINT:
            push.membership_epoch = value
        elif number == 4 and wire_type == _VARINT:
            push.clock = _signed(value)
        elif number == 5 and wire_type == _VARINT:
            push.num_samples = _signed(value)
        elif number == 6 and wire_type == _LEN:
            _check_room(push.chunks, "push.chunks")
            push.chunks.append(_chunk(value))
        elif number == 7 and wire_type == _VARINT:
            push.last = bool(value)
    return push


def _params(buf: memoryview) -> ParamsView:
    params = ParamsView()
    for number, wire_type, value in _fields(buf):
        if number == 1 and wire_type == _VARINT:
            params.version = _signed(value)
        elif number == 2 and wire_type == _LEN:
            _check_room(params.chunks, "params.chunks")
            params.chunks.append(_chunk(value))
        elif number == 3 and wire_type == _VARINT:
            params.last = bool(value)
    return params


def _decode(data: bytes, kinds: dict[int, tuple[str, Any]], tensors: Any) -> Frame:
    found: tuple[int, memoryview] | None = None
    for number, wire_type, value in _fields(memoryview(data)):
        if number in kinds and wire_type == _LEN:
            found = (number, value)  # the last member of a oneof on the wire wins
    if found is None:
        return Frame(None, None, len(data))
    number, value = found
    name, message_class = kinds[number]
    body = tensors(value) if message_class is None else message_class.FromString(bytes(value))
    return Frame(name, body, len(data))


def decode_request(data: bytes) -> Frame:
    """The Exchange request deserializer (shard side)."""
    return _decode(data, _REQUEST_KINDS, _push)


def decode_response(data: bytes) -> Frame:
    """The Exchange response deserializer (worker side)."""
    return _decode(data, _RESPONSE_KINDS, _params)
