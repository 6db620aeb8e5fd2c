"""Shard map <-> protobuf, without torch: the coordinator sends shard maps and never loads
torch (transport/serde.py, which handles tensors, builds on the dtype table here)."""

from __future__ import annotations

from collections.abc import Iterable

from tidal.core.errors import InvalidArgumentError
from tidal.core.shard_map import ShardMap, TensorInfo
from tidal.v1 import common_pb2 as common_pb

# Every dtype name of core/shard_map.py's DTYPE_NAMES, as it travels.
DTYPE_NAME_TO_PROTO = {
    "float32": common_pb.DTYPE_FLOAT32,
    "float16": common_pb.DTYPE_FLOAT16,
    "bfloat16": common_pb.DTYPE_BFLOAT16,
    "float64": common_pb.DTYPE_FLOAT64,
}
_PROTO_TO_DTYPE_NAME = {v: k for k, v in DTYPE_NAME_TO_PROTO.items()}


def dtype_name_to_proto(name: str) -> int:
    try:
        return DTYPE_NAME_TO_PROTO[name]
    except KeyError:
        raise InvalidArgumentError(f"dtype: {name} cannot travel on the wire") from None


def dtype_name_from_proto(value: int, field: str = "dtype") -> str:
    try:
        return _PROTO_TO_DTYPE_NAME[value]
    except KeyError:
        raise InvalidArgumentError(f"{field}: unsupported dtype enum value {value}") from None


def tensors_to_proto(tensors: Iterable[TensorInfo]) -> list[common_pb.TensorSpec]:
    return [common_pb.TensorSpec(name=t.name, shape=list(t.shape), dtype=dtype_name_to_proto(t.dtype)) for t in tensors]


def tensors_from_proto(msgs: Iterable[common_pb.TensorSpec], field: str) -> tuple[TensorInfo, ...]:
    """Tensor infos as they travel (a shard map's, a worker's layout); `field` names them in errors."""
    tensors = []
    for i, t in enumerate(msgs):
        if any(d < 0 for d in t.shape):
            raise InvalidArgumentError(f"{field}[{i}].shape: negative dimension in {list(t.shape)}")
        tensors.append(TensorInfo(t.name, tuple(t.shape), dtype_name_from_proto(t.dtype, f"{field}[{i}].dtype")))
    return tuple(tensors)


def shard_map_to_proto(shard_map: ShardMap) -> common_pb.ShardMap:
    return common_pb.ShardMap(
        tensors=tensors_to_proto(shard_map.tensors),
        ranges=[common_pb.ShardRange(shard=i, start=s, end=e) for i, (s, e) in enumerate(shard_map.ranges)],
    )


def shard_map_from_proto(msg: common_pb.ShardMap) -> ShardMap:
    tensors = tensors_from_proto(msg.tensors, "shard_map.tensors")
    for i, r in enumerate(msg.ranges):
        if r.shard != i:
            raise InvalidArgumentError(f"shard_map.ranges[{i}].shard: expected {i}, got {r.shard}")
    shard_map = ShardMap(tensors, tuple((r.start, r.end) for r in msg.ranges))
    shard_map.validate()
    return shard_map
