"""The commands the coordinator delivers to members over their sessions.

`JobManager` (core/jobs.py) returns them from each event. The coordinator's `Control` fixes
them as they are delivered (a snapshot of the job, the shards' addresses: what the member must be
told as of now, not as of when the stream sends it) and puts them in the member's outbox; its gRPC
edge turns them into session messages (transport/session_convert.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from tidal.core.job_records import Job, JobState


@dataclass(frozen=True)
class AssignShard:
    member_id: str
    job: Job
    shard_index: int
    # Restore the shard from its newest valid checkpoint of this job (it replaces a lost one).
    restore: bool = False


@dataclass(frozen=True)
class MoveShard:
    """Tells a worker where a restored shard now serves."""

    member_id: str
    job_id: str
    shard_index: int
    # The shard's member id; its address is filled in when the command is delivered.
    shard_member_id: str
    version: int
    shard_address: str = ""


@dataclass(frozen=True)
class PrepareWorker:
    """A new job's first step on a worker: load the data, build the model with the worker's
    own code, and report the parameter layout (events.LayoutReport)."""

    member_id: str
    job: Job
    rank: int


@dataclass(frozen=True)
class AssignWorker:
    member_id: str
    job: Job
    rank: int
    # Data-plane address of each shard by shard index, filled in when the command is delivered.
    shard_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChangeMembership:
    """The job's worker set changed: shards re-form their barriers, workers re-partition."""

    member_id: str
    job_id: str
    membership_epoch: int
    # Live workers, by rank.
    worker_ids: tuple[str, ...]


@dataclass(frozen=True)
class Evaluate:
    member_id: str
    job_id: str
    final: bool


@dataclass(frozen=True)
class Release:
    member_id: str
    job_id: str
    state: JobState
    reason: str


Command = AssignShard | PrepareWorker | AssignWorker | ChangeMembership | MoveShard | Evaluate | Release
