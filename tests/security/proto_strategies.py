"""Hypothesis strategies for any protobuf message, built from its descriptor.

Scalars lean towards the values that break parsers and validators (0, -1, type limits,
NaN and infinities, empty and huge-looking strings, unknown enum numbers); `interesting`
strings let a test steer some fields onto real ids so generated messages get past the
first checks and reach deeper code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

I64 = (-(1 << 63), (1 << 63) - 1)
U64 = (0, (1 << 64) - 1)
I32 = (-(1 << 31), (1 << 31) - 1)
U32 = (0, (1 << 32) - 1)


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (lo, hi, 0, 1, -1, 2, 255, 1 << 20, 1 << 31, (1 << 31) - 1, 1 << 62) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -3), min(hi, 300)), st.integers(lo, hi))


def _scalar(field: FieldDescriptor, interesting: Sequence[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return _ints(*I64)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return _ints(*U64)
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return _ints(*I32)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return _ints(*U32)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if t == FieldDescriptor.TYPE_DOUBLE else 32)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-2, 40))
    if t == FieldDescriptor.TYPE_STRING:
        pool = [*interesting, "", "{}", "null", "../../etc/passwd", "a" * 300]
        return st.one_of(st.sampled_from(pool), st.text(max_size=40))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    raise NotImplementedError(field.full_name)


def messages(
    descriptor: Descriptor, interesting: Sequence[str] = (), depth: int = 0, max_depth: int = 4
) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type with any subset of fields set (at most one per oneof wins)."""
    cls = GetMessageClass(descriptor)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value = _field_values(field, interesting, depth, max_depth)
        if value is not None:
            optional[field.name] = value

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            _set_field(message, descriptor.fields_by_name[name], value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


def _field_values(
    field: FieldDescriptor, interesting: Sequence[str], depth: int, max_depth: int
) -> st.SearchStrategy[Any] | None:
    """Values for one field: a dict for a map, a list for a repeated field; None to leave it out."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry = field.message_type.fields_by_name
        key_field, value_field = entry["key"], entry["value"]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            return None  # no map of messages in tidal's protos
        return st.dictionaries(_scalar(key_field, interesting), _scalar(value_field, interesting), max_size=4)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if depth >= max_depth:
            return None
        value: st.SearchStrategy[Any] = st.deferred(
            lambda f=field: messages(f.message_type, interesting, depth + 1, max_depth)
        )
    else:
        value = _scalar(field, interesting)
    return st.lists(value, max_size=4 if depth < 2 else 1) if field.is_repeated else value


def _set_field(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if isinstance(value, dict):
        target.update(value)
    elif field.is_repeated and field.type == FieldDescriptor.TYPE_MESSAGE:
        for item in value:
            target.add().CopyFrom(item)
    elif field.is_repeated:
        target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)
