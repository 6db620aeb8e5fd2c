"""What a shard restored from a checkpoint lost, counted from what its reconnecting workers report."""

from __future__ import annotations

from dataclasses import dataclass, field

from tidal.core.errors import InvalidArgumentError
from tidal.core.shard_snapshot import ShardSnapshot
from tidal.core.shard_state import ShardState
from tidal.core.spec import JobSpec


def most_pushes_per_worker(spec: JobSpec) -> int:
    """Most pushes one worker can make to one shard in this job: one per step in the barrier
    modes (a worker stops after `steps`), one per update in async (it stops once the shards
    applied `target_version`), one per round in local SGD."""
    return max(spec.steps, spec.target_version)


def check_resume(spec: JobSpec, last_version: int, completed_pushes: int, field: str) -> None:
    """A reconnecting worker's counters are claims, not facts: each must be possible in this job
    (a shard never reaches past `target_version`, a worker never pushes more than
    `most_pushes_per_worker`), so what a restore is counted to have lost stays bounded."""
    if not 0 <= last_version <= spec.target_version:
        raise InvalidArgumentError(
            f"{field}.last_version: {last_version} is outside this job's versions [0, {spec.target_version}]"
        )
    most = most_pushes_per_worker(spec)
    if not 0 <= completed_pushes <= most:
        raise InvalidArgumentError(
            f"{field}.completed_pushes: {completed_pushes} is outside [0, {most}], the pushes one worker can make"
        )


@dataclass
class RecoveryLedger:
    """What a shard restored from a checkpoint lost, counted from what its workers report
    when they reconnect: each says the newest version it received from this shard index and
    how many of its pushes completed there. A completed push the shard neither holds nor
    counted lost before was acknowledged by a lost process after its last checkpoint: it is
    lost, counted once (checkpoints carry the per-worker counts across restarts)."""

    # Version the checkpoint restored (-1: this shard was not restored).
    restored_version: int = -1
    # worker -> pushes lost by this shard's restores so far (all of them).
    lost_by_worker: dict[str, int] = field(default_factory=dict)
    # Lost by earlier restores, when this one began.
    lost_before: int = 0
    versions_lost: int = 0

    @classmethod
    def restored(cls, snapshot: ShardSnapshot) -> RecoveryLedger:
        lost = {str(w): int(n) for w, n in snapshot.counters.get("lost_by_worker", {}).items()}
        return cls(snapshot.version, lost, sum(lost.values()))

    @property
    def updates_lost(self) -> int:
        """Lost by every restore of this shard (the job's accounting counts them as handled)."""
        return sum(self.lost_by_worker.values())

    @property
    def updates_lost_here(self) -> int:
        """Lost by the latest restore."""
        return self.updates_lost - self.lost_before

    def worker_resumed(self, state: ShardState, worker_id: str, last_version: int, completed_pushes: int) -> None:
        known = state.counters.by_worker.get(worker_id, 0) + self.lost_by_worker.get(worker_id, 0)
        if completed_pushes > known:
            self.lost_by_worker[worker_id] = self.lost_by_worker.get(worker_id, 0) + completed_pushes - known
        if self.restored_version >= 0:
            self.versions_lost = max(self.versions_lost, last_version - self.restored_version)
