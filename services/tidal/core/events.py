"""What members report to the coordinator over their sessions, as domain events.

The coordinator's gRPC edge decodes each session message into one of these
(transport/session_convert.py); `Control` (coordinator/control.py) applies them to the membership and
the jobs and delivers the commands (core/commands.py) that follow.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidal.core.job_records import ShardProgress
from tidal.core.layout import Layout


@dataclass(frozen=True)
class Heartbeat:
    """The member is alive; it carries nothing else the coordinator uses."""

    # The member's count of heartbeats, for diagnosing lost ones.
    seq: int = 0


@dataclass(frozen=True)
class Goodbye:
    """The member shuts down on purpose: it leaves, it did not fail."""

    reason: str = ""


@dataclass(frozen=True)
class WorkerProgressReport:
    job_id: str
    step: int
    samples: int
    # Mean training loss of the latest step.
    loss: float
    step_time_s: float
    # Pushes every shard has acknowledged so far.
    pushes: int = 0
    # Parameter version the worker last saw: on the wire for observers, the coordinator ignores it.
    param_version: int = 0


@dataclass(frozen=True)
class ShardProgressReport:
    job_id: str
    progress: ShardProgress


@dataclass(frozen=True)
class ShardReady:
    job_id: str
    # Parameter version the shard starts from (a checkpoint's after a restore).
    version: int
    # Whether the shard writes checkpoints (a lost one is waited for, not fatal).
    checkpointing: bool


@dataclass(frozen=True)
class WorkerFinished:
    job_id: str
    steps: int
    samples: int
    # Pushes the shards acknowledged, exact now that the worker finished.
    pushes: int


@dataclass(frozen=True)
class EvalReport:
    job_id: str
    version: int
    val_loss: float
    # The value of the job objective's metric, which `metric` names (core/objectives.py).
    val_accuracy: float
    final: bool
    metric: str = "accuracy"
    higher_is_better: bool = True


@dataclass(frozen=True)
class LayoutReport:
    """A worker prepared a new job (commands.PrepareWorker): its model's parameter layout."""

    job_id: str
    layout: Layout


@dataclass(frozen=True)
class TaskFailed:
    job_id: str
    message: str


Event = (
    Heartbeat
    | Goodbye
    | WorkerProgressReport
    | ShardProgressReport
    | ShardReady
    | WorkerFinished
    | EvalReport
    | LayoutReport
    | TaskFailed
)
