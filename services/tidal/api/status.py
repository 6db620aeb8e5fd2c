"""A job's status and result as plain frozen dataclasses with string states (no protobuf)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tidal.client import job_state_name
from tidal.v1 import coordinator_pb2 as coord_pb

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation on the validation split."""

    elapsed_s: float  # since the job started running
    version: int
    val_loss: float
    val_accuracy: float


@dataclass(frozen=True)
class JobStatus:
    """A job as the coordinator reports it. `state`: pending, running, succeeded, failed or
    cancelled. Times are Unix seconds, 0 until reached."""

    job_id: str
    name: str
    state: str
    mode: str
    version: int  # lowest parameter version over the shards
    target_version: int  # the version at which training stops
    samples: int
    train_loss: float
    val_loss: float | None  # None until the first evaluation
    val_accuracy: float | None  # the value of the metric `val_metric` names
    val_metric: str  # "accuracy", "rmse", a user objective's function name, ...; "" until the first evaluation
    staleness_mean: float
    staleness_max: int
    updates_applied: int
    updates_rejected: int
    created_at: float
    started_at: float
    finished_at: float
    message: str  # why it failed or was cancelled

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def progress(self) -> float:
        """Fraction of the target version reached, in [0, 1]."""
        return min(1.0, self.version / self.target_version) if self.target_version > 0 else 0.0

    @classmethod
    def from_proto(cls, status: coord_pb.JobStatus) -> JobStatus:
        return cls(
            job_id=status.job_id,
            name=status.name,
            state=job_state_name(status.state),
            mode=status.mode,
            version=status.version,
            target_version=status.target_version,
            samples=status.samples,
            train_loss=status.train_loss,
            val_loss=status.val_loss if status.HasField("val_loss") else None,
            val_accuracy=status.val_accuracy if status.HasField("val_accuracy") else None,
            val_metric=status.val_metric,
            staleness_mean=status.staleness_mean,
            staleness_max=status.staleness_max,
            updates_applied=status.updates_applied,
            updates_rejected=status.updates_rejected,
            created_at=status.created_at,
            started_at=status.started_at,
            finished_at=status.finished_at,
            message=status.message,
        )


@dataclass(frozen=True)
class JobResult:
    """A finished job: its end state, last figures, evaluations and the spec it ran."""

    job_id: str
    name: str
    state: str
    mode: str
    version: int
    samples: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None  # the value of the metric `val_metric` names
    val_metric: str
    duration_s: float  # from start to end of training (0 if it never started)
    message: str
    evals: tuple[EvalPoint, ...] = field(repr=False)
    # The validated spec, every default filled in (read-only; left out of ==, hash and repr).
    spec: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @classmethod
    def from_proto(cls, status: coord_pb.JobStatus) -> JobResult:
        started, finished = status.started_at, status.finished_at
        return cls(
            job_id=status.job_id,
            name=status.name,
            state=job_state_name(status.state),
            mode=status.mode,
            version=status.version,
            samples=status.samples,
            train_loss=status.train_loss,
            val_loss=status.val_loss if status.HasField("val_loss") else None,
            val_accuracy=status.val_accuracy if status.HasField("val_accuracy") else None,
            val_metric=status.val_metric,
            duration_s=finished - started if started and finished else 0.0,
            message=status.message,
            evals=tuple(EvalPoint(e.elapsed_s, e.version, e.val_loss, e.val_accuracy) for e in status.evals),
            spec=MappingProxyType(json.loads(status.spec_json) if status.spec_json else {}),
        )
