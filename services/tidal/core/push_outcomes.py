"""What a shard's pushes come to: the outcome of one push, the result a worker is answered
with, and the shard's running counts of applied and refused pushes (core/shard_state.py
produces them; checkpoints, metrics and the runtime read them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from tidal.core.staleness import StalenessStats


class PushOutcome(Enum):
    APPLIED = "applied"
    BUFFERED = "buffered"
    DUPLICATE = "duplicate"
    DROPPED_LATE = "dropped_late"
    REJECTED_STALE = "rejected_stale"


@dataclass(frozen=True)
class PushResult:
    outcome: PushOutcome
    # Shard version right after the push was handled.
    version: int
    # Versions between the gradient's base and the version it was applied to.
    staleness: int
    # Lowest version the worker may train on next.
    serve_version: int
    # Staleness of every gradient this push folded into the parameters (several when it
    # completed a barrier, none when it was buffered or refused).
    folded: tuple[int, ...] = ()


@dataclass
class ShardCounters:
    updates_applied: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    staleness: StalenessStats = field(default_factory=StalenessStats)
    # worker -> distinct pushes handled (duplicates not counted); a restored shard compares it
    # with what each worker saw acknowledged to count the pushes its checkpoint lost.
    by_worker: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def updates_rejected(self) -> int:
        return sum(self.rejected.values())
