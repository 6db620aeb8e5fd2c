"""Consistency policies: pure decisions about gradients and versions.

A policy never touches tensors or sockets. Given what has arrived, the shard's version
and the membership, it says what to do with a push, when a barrier is complete and which
version a worker may use next; `ShardState` carries the decision out. New modes (backup
workers, bounded staleness, local SGD) are new policies behind the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from tidal.core.errors import FailedPreconditionError, InvalidArgumentError
from tidal.core.spec import JobSpec, Mode


class PushDecision(Enum):
    APPLY = "apply"  # fold into the parameters now
    BUFFER = "buffer"  # hold until the step's barrier completes
    REJECT_STALE = "reject_stale"  # too old to use; refused
    DROP_LATE = "drop_late"  # its step was applied without it


@dataclass(frozen=True)
class ShardView:
    """What a policy may look at: the shard's version, the job's workers and the
    workers whose gradient for the current version is buffered."""

    version: int
    members: frozenset[str]
    arrived: frozenset[str]


class ConsistencyPolicy(Protocol):
    name: str

    def on_push(self, worker_id: str, base_version: int, view: ShardView) -> PushDecision:
        """Decides what happens to a gradient computed from `base_version`."""
        ...

    def barrier_complete(self, view: ShardView) -> bool:
        """True when the buffered gradients of the current version must be applied."""
        ...

    def serve_after_push(self, base_version: int, view: ShardView) -> int:
        """Lowest version the pushing worker may train on next."""
        ...


def _check_not_ahead(base_version: int, view: ShardView) -> None:
    if base_version > view.version:
        raise InvalidArgumentError(f"push.base_version: {base_version} is ahead of the shard's version {view.version}")


class SyncPolicy:
    """BSP: the gradients of one version from every member are averaged and applied once."""

    name = "sync"

    def on_push(self, worker_id: str, base_version: int, view: ShardView) -> PushDecision:
        _check_not_ahead(base_version, view)
        if base_version < view.version:
            return PushDecision.DROP_LATE
        if worker_id in view.arrived:
            raise FailedPreconditionError(
                f"push: worker {worker_id} already pushed a gradient for version {view.version}"
            )
        return PushDecision.BUFFER

    def barrier_complete(self, view: ShardView) -> bool:
        return bool(view.members) and view.members <= view.arrived

    def serve_after_push(self, base_version: int, view: ShardView) -> int:
        return base_version + 1


class AsyncPolicy:
    """ASGD: every gradient is applied on arrival, whatever version it was computed from."""

    name = "async"

    def on_push(self, worker_id: str, base_version: int, view: ShardView) -> PushDecision:
        _check_not_ahead(base_version, view)
        return PushDecision.APPLY

    def barrier_complete(self, view: ShardView) -> bool:
        return False

    def serve_after_push(self, base_version: int, view: ShardView) -> int:
        return max(view.version, base_version + 1)


def policy_for(spec: JobSpec) -> ConsistencyPolicy:
    if spec.mode == Mode.SYNC:
        return SyncPolicy()
    return AsyncPolicy()
