from tidal.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PushOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUSH_OUTCOME_UNSPECIFIED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_APPLIED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_BUFFERED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_DUPLICATE: _ClassVar[PushOutcome]
    PUSH_OUTCOME_DROPPED_LATE: _ClassVar[PushOutcome]
    PUSH_OUTCOME_REJECTED_STALE: _ClassVar[PushOutcome]
PUSH_OUTCOME_UNSPECIFIED: PushOutcome
PUSH_OUTCOME_APPLIED: PushOutcome
PUSH_OUTCOME_BUFFERED: PushOutcome
PUSH_OUTCOME_DUPLICATE: PushOutcome
PUSH_OUTCOME_DROPPED_LATE: PushOutcome
PUSH_OUTCOME_REJECTED_STALE: PushOutcome

class PullRowsRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "membership_epoch", "table", "ids", "min_step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    MIN_STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    membership_epoch: int
    table: str
    ids: bytes
    min_step: int
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., membership_epoch: _Optional[int] = ..., table: _Optional[str] = ..., ids: _Optional[bytes] = ..., min_step: _Optional[int] = ...) -> None: ...

class PullRowsResponse(_message.Message):
    __slots__ = ("dim", "rows", "applied_step")
    DIM_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_STEP_FIELD_NUMBER: _ClassVar[int]
    dim: int
    rows: bytes
    applied_step: int
    def __init__(self, dim: _Optional[int] = ..., rows: _Optional[bytes] = ..., applied_step: _Optional[int] = ...) -> None: ...

class PushRowsRequest(_message.Message):
    __slots__ = ("job_id", "worker_id", "membership_epoch", "table", "push_id", "ids", "grads", "dim", "step", "more")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    GRADS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    membership_epoch: int
    table: str
    push_id: str
    ids: bytes
    grads: bytes
    dim: int
    step: int
    more: bool
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., membership_epoch: _Optional[int] = ..., table: _Optional[str] = ..., push_id: _Optional[str] = ..., ids: _Optional[bytes] = ..., grads: _Optional[bytes] = ..., dim: _Optional[int] = ..., step: _Optional[int] = ..., more: _Optional[bool] = ...) -> None: ...

class PushRowsResponse(_message.Message):
    __slots__ = ("outcome", "rows_applied", "applied_step")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ROWS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_STEP_FIELD_NUMBER: _ClassVar[int]
    outcome: PushOutcome
    rows_applied: int
    applied_step: int
    def __init__(self, outcome: _Optional[_Union[PushOutcome, str]] = ..., rows_applied: _Optional[int] = ..., applied_step: _Optional[int] = ...) -> None: ...

class ReadRowsRequest(_message.Message):
    __slots__ = ("job_id", "table", "ids")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    table: str
    ids: bytes
    def __init__(self, job_id: _Optional[str] = ..., table: _Optional[str] = ..., ids: _Optional[bytes] = ...) -> None: ...

class ReadRowsResponse(_message.Message):
    __slots__ = ("dim", "rows", "held")
    DIM_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    dim: int
    rows: bytes
    held: bytes
    def __init__(self, dim: _Optional[int] = ..., rows: _Optional[bytes] = ..., held: _Optional[bytes] = ...) -> None: ...

class ExchangeRequest(_message.Message):
    __slots__ = ("open", "pull", "push", "init")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    open: ExchangeOpen
    pull: Pull
    push: PushChunk
    init: PushChunk
    def __init__(self, open: _Optional[_Union[ExchangeOpen, _Mapping]] = ..., pull: _Optional[_Union[Pull, _Mapping]] = ..., push: _Optional[_Union[PushChunk, _Mapping]] = ..., init: _Optional[_Union[PushChunk, _Mapping]] = ...) -> None: ...

class ExchangeOpen(_message.Message):
    __slots__ = ("job_id", "worker_id", "membership_epoch", "last_version", "completed_pushes", "shared_memory", "init_digest", "bulk", "range_replies", "bulk_return_connection")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_PUSHES_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    INIT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BULK_FIELD_NUMBER: _ClassVar[int]
    RANGE_REPLIES_FIELD_NUMBER: _ClassVar[int]
    BULK_RETURN_CONNECTION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    membership_epoch: int
    last_version: int
    completed_pushes: int
    shared_memory: SharedMemoryOffer
    init_digest: str
    bulk: bool
    range_replies: bool
    bulk_return_connection: bool
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., membership_epoch: _Optional[int] = ..., last_version: _Optional[int] = ..., completed_pushes: _Optional[int] = ..., shared_memory: _Optional[_Union[SharedMemoryOffer, _Mapping]] = ..., init_digest: _Optional[str] = ..., bulk: _Optional[bool] = ..., range_replies: _Optional[bool] = ..., bulk_return_connection: _Optional[bool] = ...) -> None: ...

class SharedMemoryOffer(_message.Message):
    __slots__ = ("push_segment", "params_segment", "push_segment_bytes", "params_segment_bytes", "token")
    PUSH_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PUSH_SEGMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SEGMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    push_segment: str
    params_segment: str
    push_segment_bytes: int
    params_segment_bytes: int
    token: bytes
    def __init__(self, push_segment: _Optional[str] = ..., params_segment: _Optional[str] = ..., push_segment_bytes: _Optional[int] = ..., params_segment_bytes: _Optional[int] = ..., token: _Optional[bytes] = ...) -> None: ...

class Pull(_message.Message):
    __slots__ = ("min_version",)
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    def __init__(self, min_version: _Optional[int] = ...) -> None: ...

class PushChunk(_message.Message):
    __slots__ = ("push_id", "base_version", "membership_epoch", "clock", "num_samples", "chunks", "last")
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    push_id: str
    base_version: int
    membership_epoch: int
    clock: int
    num_samples: int
    chunks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorChunk]
    last: bool
    def __init__(self, push_id: _Optional[str] = ..., base_version: _Optional[int] = ..., membership_epoch: _Optional[int] = ..., clock: _Optional[int] = ..., num_samples: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[_common_pb2.TensorChunk, _Mapping]]] = ..., last: _Optional[bool] = ...) -> None: ...

class ExchangeResponse(_message.Message):
    __slots__ = ("opened", "ack", "params")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    opened: ExchangeOpened
    ack: PushAck
    params: Params
    def __init__(self, opened: _Optional[_Union[ExchangeOpened, _Mapping]] = ..., ack: _Optional[_Union[PushAck, _Mapping]] = ..., params: _Optional[_Union[Params, _Mapping]] = ...) -> None: ...

class ExchangeOpened(_message.Message):
    __slots__ = ("shard_index", "version", "range", "shared_memory", "bulk", "range_replies")
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    BULK_FIELD_NUMBER: _ClassVar[int]
    RANGE_REPLIES_FIELD_NUMBER: _ClassVar[int]
    shard_index: int
    version: int
    range: _common_pb2.ShardRange
    shared_memory: bool
    bulk: BulkChannel
    range_replies: bool
    def __init__(self, shard_index: _Optional[int] = ..., version: _Optional[int] = ..., range: _Optional[_Union[_common_pb2.ShardRange, _Mapping]] = ..., shared_memory: _Optional[bool] = ..., bulk: _Optional[_Union[BulkChannel, _Mapping]] = ..., range_replies: _Optional[bool] = ...) -> None: ...

class BulkChannel(_message.Message):
    __slots__ = ("port", "token", "return_token")
    PORT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RETURN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    port: int
    token: bytes
    return_token: bytes
    def __init__(self, port: _Optional[int] = ..., token: _Optional[bytes] = ..., return_token: _Optional[bytes] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("push_id", "outcome", "version", "staleness")
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    push_id: str
    outcome: PushOutcome
    version: int
    staleness: int
    def __init__(self, push_id: _Optional[str] = ..., outcome: _Optional[_Union[PushOutcome, str]] = ..., version: _Optional[int] = ..., staleness: _Optional[int] = ...) -> None: ...

class Params(_message.Message):
    __slots__ = ("version", "chunks", "last")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    version: int
    chunks: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorChunk]
    last: bool
    def __init__(self, version: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[_common_pb2.TensorChunk, _Mapping]]] = ..., last: _Optional[bool] = ...) -> None: ...

class ReadParametersRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ReadParametersResponse(_message.Message):
    __slots__ = ("params",)
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    params: Params
    def __init__(self, params: _Optional[_Union[Params, _Mapping]] = ...) -> None: ...

class GetShardInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetShardInfoResponse(_message.Message):
    __slots__ = ("job_id", "shard_index", "version", "range", "updates_applied", "updates_rejected", "membership_epoch")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    UPDATES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    UPDATES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    shard_index: int
    version: int
    range: _common_pb2.ShardRange
    updates_applied: int
    updates_rejected: int
    membership_epoch: int
    def __init__(self, job_id: _Optional[str] = ..., shard_index: _Optional[int] = ..., version: _Optional[int] = ..., range: _Optional[_Union[_common_pb2.ShardRange, _Mapping]] = ..., updates_applied: _Optional[int] = ..., updates_rejected: _Optional[int] = ..., membership_epoch: _Optional[int] = ...) -> None: ...
