"""`Control` driven with domain events, without protobuf or sockets: members report events
(core/events.py) and find domain commands (core/commands.py) in their outboxes, fixed as of
their delivery; `watch` yields job snapshots. No proto is imported here, and importing
`tidal.coordinator.control` loads none."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tidal.coordinator.control import Control, Outbox
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.core.commands import (
    AssignShard,
    AssignWorker,
    ChangeMembership,
    Command,
    Evaluate,
    MoveShard,
    PrepareWorker,
    Release,
)
from tidal.core.events import (
    EvalReport,
    Goodbye,
    Heartbeat,
    LayoutReport,
    ShardProgressReport,
    ShardReady,
    TaskFailed,
    WorkerFinished,
    WorkerProgressReport,
)
from tidal.core.job_records import Job, JobState, ShardProgress
from tidal.core.layout import Layout
from tidal.core.membership import MemberState, Role
from tidal.core.shard_map import TensorInfo

pytestmark = pytest.mark.anyio

SPEC = {"name": "events", "mode": "sync", "num_workers": 1, "num_shards": 1, "steps": 5}


@dataclass
class Cluster:
    control: Control
    registry: CollectorRegistry
    shards: list[str]
    workers: list[str]
    outboxes: dict[str, Outbox]

    def sent(self, member_id: str) -> list[Command | None]:
        """Everything in the member's outbox so far (None: its session stream was ended)."""
        outbox, items = self.outboxes[member_id], []
        while not outbox.empty():
            items.append(outbox.get_nowait())
        return items

    def clear(self) -> None:
        for member_id in self.outboxes:
            self.sent(member_id)

    async def join(self, role: Role, address: str = "", checkpoints: list[tuple[str, int]] | None = None) -> str:
        member, _ = self.control.register(role, address, role.value, checkpoints=checkpoints or [])
        self.outboxes[member.member_id] = await self.control.open_session(member.member_id)
        return member.member_id


async def cluster(shards: int = 1, workers: int = 1) -> Cluster:
    registry = CollectorRegistry()
    # A heartbeat timeout no test reaches: nothing fails a member for silence here.
    c = Cluster(Control(CoordinatorCounters(registry), heartbeat_timeout_s=3600.0), registry, [], [], {})
    c.shards = [await c.join(Role.SHARD, f"10.0.0.{i}:7000") for i in range(shards)]
    c.workers = [await c.join(Role.WORKER) for _ in range(workers)]
    return c


# What the workers report of the model they built.
LAYOUT = Layout((TensorInfo("w", (8,), "float32"),), "0" * 32)


async def prepared_job(c: Cluster, **spec: Any) -> Job:
    """Submits a job and lets its workers report their layout: its shards are assigned."""
    job = await c.control.submit(json.dumps({**SPEC, **spec}))
    for worker in list(job.worker_ids):
        await c.control.handle(worker, LayoutReport(job.job_id, LAYOUT))
    return job


async def running_job(c: Cluster, **spec: Any) -> Job:
    """Submits a job, lets its workers report their layout and reports its shards ready: its
    workers are assigned."""
    job = await prepared_job(c, **spec)
    for shard in c.shards:
        await c.control.handle(shard, ShardReady(job.job_id, 0, checkpointing=False))
    return job


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def c() -> Cluster:
    """One shard and one worker, both with an open session."""
    return await cluster()


@pytest.fixture
async def job(c: Cluster) -> Job:
    """A running job of `c`, its assignments taken out of the outboxes."""
    job = await running_job(c)
    c.clear()
    return job


# --- assignment ----------------------------------------------------------------------------
async def test_a_job_prepares_its_workers_then_assigns_its_shards_then_its_workers(c: Cluster) -> None:
    (shard,), (worker,) = c.shards, c.workers
    job = await c.control.submit(json.dumps(SPEC))
    (prepare,) = c.sent(worker)
    assert isinstance(prepare, PrepareWorker) and prepare.job.shard_map is None
    assert c.sent(shard) == []  # the shards wait for the workers' layout
    await c.control.handle(worker, LayoutReport(job.job_id, LAYOUT))
    (assign,) = c.sent(shard)
    assert isinstance(assign, AssignShard)
    assert (assign.member_id, assign.job.job_id, assign.shard_index) == (shard, job.job_id, 0)
    assert not assign.restore and assign.job is not job  # a snapshot, as of delivery
    assert c.sent(worker) == []  # workers wait for the shards

    await c.control.handle(shard, ShardReady(job.job_id, 0, checkpointing=False))
    (assign_worker,) = c.sent(worker)
    assert isinstance(assign_worker, AssignWorker)
    assert (assign_worker.rank, assign_worker.shard_addresses) == (0, ("10.0.0.0:7000",))
    assert assign_worker.job.worker_ids == [worker]


async def test_a_queued_command_says_what_was_true_when_it_was_delivered() -> None:
    c = await cluster(shards=1, workers=2)
    (shard,), (w0, w1) = c.shards, c.workers
    job = await prepared_job(c, num_workers=2)
    # The shard's stream has not sent its assignment yet when a worker leaves.
    await c.control.handle(w1, Goodbye("scaled down"))
    assign, change = c.sent(shard)
    assert isinstance(assign, AssignShard)
    assert (assign.job.membership_epoch, assign.job.worker_ids) == (1, [w0, w1])
    assert change == ChangeMembership(shard, job.job_id, 2, (w0,))
    assert job.membership_epoch == 2


# --- progress, evaluation, the end -----------------------------------------------------------
async def test_reports_finish_the_job_and_release_its_members(c: Cluster, job: Job) -> None:
    (shard,), (worker,) = c.shards, c.workers

    await c.control.handle(worker, WorkerProgressReport(job.job_id, 5, 320, 0.5, 0.01, pushes=5))
    assert (job.workers[worker].step, job.workers[worker].samples, job.workers[worker].loss) == (5, 320, 0.5)
    await c.control.handle(worker, WorkerFinished(job.job_id, steps=5, samples=320, pushes=5))
    assert c.sent(worker) == [Evaluate(worker, job.job_id, final=True)]
    progress = ShardProgress(version=5, updates_applied=5)
    await c.control.handle(shard, ShardProgressReport(job.job_id, progress))
    assert job.state is JobState.RUNNING
    await c.control.handle(worker, EvalReport(job.job_id, 5, val_loss=0.4, val_accuracy=0.9, final=True))

    assert job.state is JobState.SUCCEEDED
    assert c.sent(shard) == [Release(shard, job.job_id, JobState.SUCCEEDED, "")]
    assert c.sent(worker) == [Release(worker, job.job_id, JobState.SUCCEEDED, "")]


async def test_a_failed_task_fails_the_job_for_every_member(c: Cluster, job: Job) -> None:
    (shard,), (worker,) = c.shards, c.workers
    await c.control.handle(worker, TaskFailed(job.job_id, "out of memory"))
    assert job.state is JobState.FAILED and "out of memory" in job.message
    for member in (shard, worker):
        (release,) = c.sent(member)
        assert isinstance(release, Release) and release.state is JobState.FAILED


async def test_a_goodbye_ends_the_session_and_the_member_left_rather_than_failed(c: Cluster, job: Job) -> None:
    (shard,), (worker,) = c.shards, c.workers
    await c.control.handle(worker, Goodbye("shutting down"))
    assert c.sent(worker) == [None]  # its session stream ends
    assert c.control.membership.get(worker).state is MemberState.LEFT
    assert c.registry.get_sample_value("tidal_coordinator_members_left_total", {"role": "worker"}) == 1
    assert c.registry.get_sample_value(
        "tidal_coordinator_member_failures_total", {"role": "worker", "reason": "session_closed"}
    ) == 0  # fmt: skip
    # Its job had no worker left to spare (min_workers 1).
    assert job.state is JobState.FAILED
    assert c.sent(shard) == [Release(shard, job.job_id, JobState.FAILED, job.message)]


async def test_a_heartbeat_is_counted_and_changes_no_job(c: Cluster, job: Job) -> None:
    (worker,) = c.workers
    await c.control.handle(worker, Heartbeat())
    await c.control.handle(worker, Heartbeat())
    assert c.registry.get_sample_value("tidal_coordinator_heartbeats_total", {"role": "worker"}) == 2
    assert c.sent(worker) == []
    assert job.state is JobState.RUNNING


async def test_a_late_report_is_ignored_and_keeps_the_session(c: Cluster, job: Job) -> None:
    (worker,) = c.workers
    await c.control.cancel(job.job_id)
    c.sent(worker)
    await c.control.handle(worker, WorkerProgressReport(job.job_id, 9, 9, 0.1, 0.01))
    await c.control.handle(worker, WorkerFinished("job-404", 1, 1, 1))
    assert c.sent(worker) == []
    assert c.control.membership.get(worker).live
    assert job.workers[worker].step == 0


async def test_an_event_without_a_handler_is_a_bug_that_fails_loudly(c: Cluster) -> None:
    with pytest.raises(TypeError, match="no handler"):
        await c.control.handle(c.workers[0], "heartbeat")  # type: ignore[arg-type]


# --- a shard restored from its checkpoint ------------------------------------------------------
async def test_a_restored_shard_is_announced_to_workers_with_its_new_address(c: Cluster) -> None:
    (shard,), (worker,) = c.shards, c.workers
    job = await c.control.submit(json.dumps(SPEC))
    await c.control.handle(shard, ShardReady(job.job_id, 0, checkpointing=True))
    await c.control.handle(shard, Goodbye("node drained"))
    assert job.state is JobState.RUNNING  # waits for a replacement
    c.sent(worker)

    new = await c.join(Role.SHARD, "10.0.0.9:7000", checkpoints=[(job.job_id, 0)])
    (assign,) = c.sent(new)
    assert isinstance(assign, AssignShard) and (assign.shard_index, assign.restore) == (0, True)
    await c.control.handle(new, ShardReady(job.job_id, 4, checkpointing=True))
    assert c.sent(worker) == [MoveShard(worker, job.job_id, 0, new, 4, shard_address="10.0.0.9:7000")]


# --- watching ----------------------------------------------------------------------------------
async def test_watch_yields_snapshots_until_the_job_ends(c: Cluster, job: Job) -> None:
    watcher = c.control.watch(job.job_id)
    first = await anext(watcher)
    assert first.state is JobState.RUNNING and first is not job
    await c.control.cancel(job.job_id)
    last = await anext(watcher)
    assert last.state is JobState.CANCELLED
    assert first.state is JobState.RUNNING  # a snapshot: later changes do not reach it
    assert await anext(watcher, None) is None


# --- no protobuf ---------------------------------------------------------------------------------
def test_control_loads_no_protobuf_or_grpc() -> None:
    code = (
        "import sys, tidal.coordinator.control\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google') or m.startswith('tidal.v1')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
