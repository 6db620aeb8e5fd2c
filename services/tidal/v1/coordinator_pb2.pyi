from tidal.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("role", "address", "name", "member_id", "checkpoints", "shard_index")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    role: _common_pb2.Role
    address: str
    name: str
    member_id: str
    checkpoints: _containers.RepeatedCompositeFieldContainer[ShardCheckpoint]
    shard_index: int
    def __init__(self, role: _Optional[_Union[_common_pb2.Role, str]] = ..., address: _Optional[str] = ..., name: _Optional[str] = ..., member_id: _Optional[str] = ..., checkpoints: _Optional[_Iterable[_Union[ShardCheckpoint, _Mapping]]] = ..., shard_index: _Optional[int] = ...) -> None: ...

class ShardCheckpoint(_message.Message):
    __slots__ = ("job_id", "shard_index", "version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    shard_index: int
    version: int
    def __init__(self, job_id: _Optional[str] = ..., shard_index: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("member_id", "heartbeat_interval_s", "heartbeat_timeout_s", "resumed")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    resumed: bool
    def __init__(self, member_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., heartbeat_timeout_s: _Optional[float] = ..., resumed: _Optional[bool] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("open", "heartbeat", "worker_progress", "shard_progress", "shard_ready", "worker_finished", "eval_report", "task_failed", "goodbye", "layout_report")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    WORKER_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SHARD_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SHARD_READY_FIELD_NUMBER: _ClassVar[int]
    WORKER_FINISHED_FIELD_NUMBER: _ClassVar[int]
    EVAL_REPORT_FIELD_NUMBER: _ClassVar[int]
    TASK_FAILED_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_REPORT_FIELD_NUMBER: _ClassVar[int]
    open: SessionOpen
    heartbeat: Heartbeat
    worker_progress: WorkerProgress
    shard_progress: ShardProgress
    shard_ready: ShardReady
    worker_finished: WorkerFinished
    eval_report: EvalReport
    task_failed: TaskFailed
    goodbye: Goodbye
    layout_report: LayoutReport
    def __init__(self, open: _Optional[_Union[SessionOpen, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., worker_progress: _Optional[_Union[WorkerProgress, _Mapping]] = ..., shard_progress: _Optional[_Union[ShardProgress, _Mapping]] = ..., shard_ready: _Optional[_Union[ShardReady, _Mapping]] = ..., worker_finished: _Optional[_Union[WorkerFinished, _Mapping]] = ..., eval_report: _Optional[_Union[EvalReport, _Mapping]] = ..., task_failed: _Optional[_Union[TaskFailed, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., layout_report: _Optional[_Union[LayoutReport, _Mapping]] = ...) -> None: ...

class SessionOpen(_message.Message):
    __slots__ = ("member_id",)
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    def __init__(self, member_id: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class WorkerProgress(_message.Message):
    __slots__ = ("job_id", "step", "samples", "loss", "step_time_s", "param_version", "pushes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_S_FIELD_NUMBER: _ClassVar[int]
    PARAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    samples: int
    loss: float
    step_time_s: float
    param_version: int
    pushes: int
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., samples: _Optional[int] = ..., loss: _Optional[float] = ..., step_time_s: _Optional[float] = ..., param_version: _Optional[int] = ..., pushes: _Optional[int] = ...) -> None: ...

class ShardProgress(_message.Message):
    __slots__ = ("job_id", "version", "updates_applied", "updates_rejected", "staleness_sum", "staleness_count", "staleness_max", "updates_lost", "versions_lost", "checkpoint_version", "pushes_by_worker")
    class PushesByWorkerEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    UPDATES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    STALENESS_SUM_FIELD_NUMBER: _ClassVar[int]
    STALENESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    STALENESS_MAX_FIELD_NUMBER: _ClassVar[int]
    UPDATES_LOST_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_LOST_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PUSHES_BY_WORKER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    updates_applied: int
    updates_rejected: int
    staleness_sum: int
    staleness_count: int
    staleness_max: int
    updates_lost: int
    versions_lost: int
    checkpoint_version: int
    pushes_by_worker: _containers.ScalarMap[str, int]
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., updates_applied: _Optional[int] = ..., updates_rejected: _Optional[int] = ..., staleness_sum: _Optional[int] = ..., staleness_count: _Optional[int] = ..., staleness_max: _Optional[int] = ..., updates_lost: _Optional[int] = ..., versions_lost: _Optional[int] = ..., checkpoint_version: _Optional[int] = ..., pushes_by_worker: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ShardReady(_message.Message):
    __slots__ = ("job_id", "version", "checkpointing")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    checkpointing: bool
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., checkpointing: _Optional[bool] = ...) -> None: ...

class WorkerFinished(_message.Message):
    __slots__ = ("job_id", "steps", "samples", "pushes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    steps: int
    samples: int
    pushes: int
    def __init__(self, job_id: _Optional[str] = ..., steps: _Optional[int] = ..., samples: _Optional[int] = ..., pushes: _Optional[int] = ...) -> None: ...

class EvalReport(_message.Message):
    __slots__ = ("job_id", "version", "val_loss", "val_accuracy", "final", "metric", "metric_higher_is_better")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    METRIC_HIGHER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    val_loss: float
    val_accuracy: float
    final: bool
    metric: str
    metric_higher_is_better: bool
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., val_loss: _Optional[float] = ..., val_accuracy: _Optional[float] = ..., final: _Optional[bool] = ..., metric: _Optional[str] = ..., metric_higher_is_better: _Optional[bool] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class LayoutReport(_message.Message):
    __slots__ = ("job_id", "tensors", "init_digest")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    INIT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tensors: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorSpec]
    init_digest: str
    def __init__(self, job_id: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[_common_pb2.TensorSpec, _Mapping]]] = ..., init_digest: _Optional[str] = ...) -> None: ...

class TaskFailed(_message.Message):
    __slots__ = ("job_id", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    message: str
    def __init__(self, job_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("welcome", "assign_shard", "assign_worker", "membership_changed", "evaluate", "release_job", "shard_moved", "prepare_worker")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_SHARD_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_WORKER_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_CHANGED_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_JOB_FIELD_NUMBER: _ClassVar[int]
    SHARD_MOVED_FIELD_NUMBER: _ClassVar[int]
    PREPARE_WORKER_FIELD_NUMBER: _ClassVar[int]
    welcome: SessionWelcome
    assign_shard: AssignShard
    assign_worker: AssignWorker
    membership_changed: MembershipChanged
    evaluate: Evaluate
    release_job: ReleaseJob
    shard_moved: ShardMoved
    prepare_worker: PrepareWorker
    def __init__(self, welcome: _Optional[_Union[SessionWelcome, _Mapping]] = ..., assign_shard: _Optional[_Union[AssignShard, _Mapping]] = ..., assign_worker: _Optional[_Union[AssignWorker, _Mapping]] = ..., membership_changed: _Optional[_Union[MembershipChanged, _Mapping]] = ..., evaluate: _Optional[_Union[Evaluate, _Mapping]] = ..., release_job: _Optional[_Union[ReleaseJob, _Mapping]] = ..., shard_moved: _Optional[_Union[ShardMoved, _Mapping]] = ..., prepare_worker: _Optional[_Union[PrepareWorker, _Mapping]] = ...) -> None: ...

class SessionWelcome(_message.Message):
    __slots__ = ("member_id",)
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    def __init__(self, member_id: _Optional[str] = ...) -> None: ...

class AssignShard(_message.Message):
    __slots__ = ("job_id", "spec_json", "shard_index", "shard_map", "membership_epoch", "worker_ids", "restore")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARD_MAP_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec_json: str
    shard_index: int
    shard_map: _common_pb2.ShardMap
    membership_epoch: int
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    restore: bool
    def __init__(self, job_id: _Optional[str] = ..., spec_json: _Optional[str] = ..., shard_index: _Optional[int] = ..., shard_map: _Optional[_Union[_common_pb2.ShardMap, _Mapping]] = ..., membership_epoch: _Optional[int] = ..., worker_ids: _Optional[_Iterable[str]] = ..., restore: _Optional[bool] = ...) -> None: ...

class PrepareWorker(_message.Message):
    __slots__ = ("job_id", "spec_json", "rank", "world_size", "membership_epoch", "worker_ids")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec_json: str
    rank: int
    world_size: int
    membership_epoch: int
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., spec_json: _Optional[str] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., membership_epoch: _Optional[int] = ..., worker_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AssignWorker(_message.Message):
    __slots__ = ("job_id", "spec_json", "rank", "world_size", "membership_epoch", "shard_map", "shard_addresses", "worker_ids")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SHARD_MAP_FIELD_NUMBER: _ClassVar[int]
    SHARD_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec_json: str
    rank: int
    world_size: int
    membership_epoch: int
    shard_map: _common_pb2.ShardMap
    shard_addresses: _containers.RepeatedScalarFieldContainer[str]
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., spec_json: _Optional[str] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., membership_epoch: _Optional[int] = ..., shard_map: _Optional[_Union[_common_pb2.ShardMap, _Mapping]] = ..., shard_addresses: _Optional[_Iterable[str]] = ..., worker_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MembershipChanged(_message.Message):
    __slots__ = ("job_id", "membership_epoch", "worker_ids")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    membership_epoch: int
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., membership_epoch: _Optional[int] = ..., worker_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ShardMoved(_message.Message):
    __slots__ = ("job_id", "shard_index", "address", "version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    shard_index: int
    address: str
    version: int
    def __init__(self, job_id: _Optional[str] = ..., shard_index: _Optional[int] = ..., address: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Evaluate(_message.Message):
    __slots__ = ("job_id", "final")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    final: bool
    def __init__(self, job_id: _Optional[str] = ..., final: _Optional[bool] = ...) -> None: ...

class ReleaseJob(_message.Message):
    __slots__ = ("job_id", "final_state", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    final_state: _common_pb2.JobState
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., final_state: _Optional[_Union[_common_pb2.JobState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec_json",)
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    def __init__(self, spec_json: _Optional[str] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobStatus
    def __init__(self, job: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobStatus
    def __init__(self, job: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobStatus
    def __init__(self, job: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobStatus
    def __init__(self, job: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class GetClusterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusterResponse(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("member_id", "role", "state", "address", "name", "job_id", "heartbeat_age_s")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    role: _common_pb2.Role
    state: _common_pb2.MemberState
    address: str
    name: str
    job_id: str
    heartbeat_age_s: float
    def __init__(self, member_id: _Optional[str] = ..., role: _Optional[_Union[_common_pb2.Role, str]] = ..., state: _Optional[_Union[_common_pb2.MemberState, str]] = ..., address: _Optional[str] = ..., name: _Optional[str] = ..., job_id: _Optional[str] = ..., heartbeat_age_s: _Optional[float] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("member_id", "rank", "step", "samples", "loss", "step_time_s", "finished", "pushes", "lost")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    rank: int
    step: int
    samples: int
    loss: float
    step_time_s: float
    finished: bool
    pushes: int
    lost: str
    def __init__(self, member_id: _Optional[str] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., samples: _Optional[int] = ..., loss: _Optional[float] = ..., step_time_s: _Optional[float] = ..., finished: _Optional[bool] = ..., pushes: _Optional[int] = ..., lost: _Optional[str] = ...) -> None: ...

class EvalPoint(_message.Message):
    __slots__ = ("elapsed_s", "version", "val_loss", "val_accuracy", "metric")
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    elapsed_s: float
    version: int
    val_loss: float
    val_accuracy: float
    metric: str
    def __init__(self, elapsed_s: _Optional[float] = ..., version: _Optional[int] = ..., val_loss: _Optional[float] = ..., val_accuracy: _Optional[float] = ..., metric: _Optional[str] = ...) -> None: ...

class ShardRestart(_message.Message):
    __slots__ = ("shard_index", "member_id", "restored_version", "versions_lost", "updates_lost", "recovery_s", "lost_at")
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    RESTORED_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_LOST_FIELD_NUMBER: _ClassVar[int]
    UPDATES_LOST_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_S_FIELD_NUMBER: _ClassVar[int]
    LOST_AT_FIELD_NUMBER: _ClassVar[int]
    shard_index: int
    member_id: str
    restored_version: int
    versions_lost: int
    updates_lost: int
    recovery_s: float
    lost_at: float
    def __init__(self, shard_index: _Optional[int] = ..., member_id: _Optional[str] = ..., restored_version: _Optional[int] = ..., versions_lost: _Optional[int] = ..., updates_lost: _Optional[int] = ..., recovery_s: _Optional[float] = ..., lost_at: _Optional[float] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "name", "state", "mode", "spec_json", "version", "target_version", "samples", "train_loss", "val_loss", "val_accuracy", "staleness_mean", "staleness_max", "updates_applied", "updates_rejected", "created_at", "started_at", "finished_at", "message", "membership_epoch", "workers", "evals", "shard_restarts", "val_metric", "val_metric_higher_is_better")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    STALENESS_MEAN_FIELD_NUMBER: _ClassVar[int]
    STALENESS_MAX_FIELD_NUMBER: _ClassVar[int]
    UPDATES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    UPDATES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    EVALS_FIELD_NUMBER: _ClassVar[int]
    SHARD_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    VAL_METRIC_FIELD_NUMBER: _ClassVar[int]
    VAL_METRIC_HIGHER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    state: _common_pb2.JobState
    mode: str
    spec_json: str
    version: int
    target_version: int
    samples: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    staleness_mean: float
    staleness_max: int
    updates_applied: int
    updates_rejected: int
    created_at: float
    started_at: float
    finished_at: float
    message: str
    membership_epoch: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    evals: _containers.RepeatedCompositeFieldContainer[EvalPoint]
    shard_restarts: _containers.RepeatedCompositeFieldContainer[ShardRestart]
    val_metric: str
    val_metric_higher_is_better: bool
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., mode: _Optional[str] = ..., spec_json: _Optional[str] = ..., version: _Optional[int] = ..., target_version: _Optional[int] = ..., samples: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., val_accuracy: _Optional[float] = ..., staleness_mean: _Optional[float] = ..., staleness_max: _Optional[int] = ..., updates_applied: _Optional[int] = ..., updates_rejected: _Optional[int] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., message: _Optional[str] = ..., membership_epoch: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., evals: _Optional[_Iterable[_Union[EvalPoint, _Mapping]]] = ..., shard_restarts: _Optional[_Iterable[_Union[ShardRestart, _Mapping]]] = ..., val_metric: _Optional[str] = ..., val_metric_higher_is_better: _Optional[bool] = ...) -> None: ...
