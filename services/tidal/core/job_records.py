"""What the coordinator knows about a job: its state, the progress of its shards and workers,
the shard losses it survived and its evaluations.

Plain records: `JobManager` (core/jobs.py) changes them, the coordinator reports and saves them
(core/snapshot.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from tidal.core.layout import Layout
from tidal.core.shard_map import ShardMap
from tidal.core.spec import JobSpec


class JobState(Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass
class WorkerProgress:
    rank: int
    step: int = 0
    samples: int = 0
    loss: float = float("nan")
    step_time_s: float = 0.0
    finished: bool = False
    # Acknowledged pushes to each shard: as last reported, exact once the worker finished.
    pushes: int = 0
    # Why the worker is no longer part of the job ("failed", "left"); empty while it is.
    lost: str = ""


@dataclass
class ShardProgress:
    version: int = 0
    updates_applied: int = 0
    updates_rejected: int = 0
    staleness_sum: int = 0
    staleness_count: int = 0
    staleness_max: int = 0
    # After a restore from a checkpoint (see ShardRestart): what the checkpoint lost.
    updates_lost: int = 0
    versions_lost: int = 0
    # Version of the newest checkpoint the shard wrote (-1: none).
    checkpoint_version: int = -1
    # Distinct pushes handled per worker (dead ones included); empty if the shard does not say.
    pushes_by_worker: dict[str, int] = field(default_factory=dict)


@dataclass
class ShardRestart:
    """A lost shard of a running job, waiting for (or restored by) a replacement that
    restarts from its checkpoint."""

    shard_index: int
    lost_member: str
    # Unix time of the loss.
    lost_at: float
    # Version the lost shard had last reported.
    lost_version: int
    # The replacement once one is assigned ("" while the job waits for one).
    member_id: str = ""
    # The lost member's name and address, for the message if it does not come back.
    lost_name: str = ""
    lost_address: str = ""
    restored_version: int = -1
    # Unix time the replacement was ready (0: recovering).
    ready_at: float = 0.0
    updates_lost: int = 0
    versions_lost: int = 0

    @property
    def recovering(self) -> bool:
        return self.ready_at == 0.0


@dataclass(frozen=True)
class EvalPoint:
    elapsed_s: float
    version: int
    val_loss: float
    # The value of the objective's metric that `metric` names (accuracy, skill, rmse, ...).
    val_accuracy: float
    metric: str = "accuracy"
    higher_is_better: bool = True


@dataclass
class Job:
    job_id: str
    spec: JobSpec
    # Planned from the layout its workers announce (core/layout.py); None until they did.
    shard_map: ShardMap | None
    created_at: float
    state: JobState = JobState.PENDING
    started_at: float = 0.0
    finished_at: float = 0.0
    message: str = ""
    membership_epoch: int = 0
    shard_ids: list[str] = field(default_factory=list)  # by shard index
    worker_ids: list[str] = field(default_factory=list)  # live workers, by rank
    # The rank the next joining worker gets (ranks are never reused).
    next_rank: int = 0
    shards_ready: set[str] = field(default_factory=set)
    workers: dict[str, WorkerProgress] = field(default_factory=dict)
    shards: dict[str, ShardProgress] = field(default_factory=dict)
    evals: list[EvalPoint] = field(default_factory=list)
    final_eval_by: str = ""
    final_eval_done: bool = False
    # Unix time of the last progress report from any member (0: none yet).
    last_progress_at: float = 0.0
    # Indices of the shards that write checkpoints (a lost one is waited for, not fatal).
    checkpointing: set[int] = field(default_factory=set)
    # Shard losses survived or being survived, oldest first.
    restarts: list[ShardRestart] = field(default_factory=list)
    # While the workers prepare the job: the layout the first of them reported, and who has.
    layout: Layout | None = None
    layout_from: set[str] = field(default_factory=set)

    def pending_restart(self, shard_index: int) -> ShardRestart | None:
        return next((r for r in self.restarts if r.shard_index == shard_index and r.recovering), None)

    @property
    def members(self) -> list[str]:
        return [*self.shard_ids, *self.worker_ids]

    @property
    def version(self) -> int:
        return min((s.version for s in self.shards.values()), default=0)

    @property
    def samples(self) -> int:
        return sum(w.samples for w in self.workers.values())

    @property
    def accepts_workers(self) -> bool:
        """Whether a worker may join now: running, every shard ready, final evaluation not begun."""
        ready = bool(self.shard_ids) and self.shards_ready == set(self.shard_ids)
        planned = self.shard_map is not None
        return self.state is JobState.RUNNING and planned and ready and not self.final_eval_by

    @property
    def preparing(self) -> bool:
        """Running, and its workers still build the model: no shard map yet."""
        return self.state is JobState.RUNNING and self.shard_map is None
