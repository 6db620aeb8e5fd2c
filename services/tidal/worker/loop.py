"""One job on one worker: pull, compute, push, report, until the job's target version."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tidal.core.datasets import Dataset, batch_indices, partition_indices
from tidal.core.flat import FlatModel
from tidal.core.plan import job_dataset, job_model
from tidal.core.shard_map import ShardMap
from tidal.core.spec import JobSpec, Mode
from tidal.core.stragglers import StragglerProfile
from tidal.core.training import EvalResult, compute_gradient, evaluate
from tidal.worker.links import ShardLink

log = logging.getLogger(__name__)

# Progress reports go to the coordinator at most this often, in seconds.
PROGRESS_INTERVAL_S = 0.25


@dataclass
class StepReport:
    step: int
    samples: int
    loss: float
    step_time_s: float
    param_version: int


@dataclass(frozen=True)
class Assignment:
    job_id: str
    worker_id: str
    spec: JobSpec
    rank: int
    world_size: int
    membership_epoch: int
    shard_map: ShardMap
    shard_addresses: list[str]


class TrainingRun:
    """Everything a worker holds for one job; `train` is the worker's one loop."""

    def __init__(self, assignment: Assignment, slowdown: float) -> None:
        self.a = assignment
        spec = assignment.spec
        self.dataset: Dataset = job_dataset(spec)
        self.flat = FlatModel(job_model(spec, self.dataset))
        self.partition = partition_indices(len(self.dataset.train_y), assignment.rank, assignment.world_size, spec.seed)
        declared = spec.straggler(assignment.rank)
        self.straggler = StragglerProfile(
            slowdown * (declared.slowdown if declared else 1.0),
            declared.delay if declared else None,
            seed=spec.seed * 1009 + assignment.rank,
        )
        # Channels belong to the event loop, so links are made in `connect`, not here
        # (this constructor runs in a thread: building the model and data takes a while).
        self.links: list[ShardLink] = []
        self.step = 0
        self.samples = 0

    @property
    def version(self) -> int:
        return min((link.version for link in self.links), default=-1)

    def _done(self) -> bool:
        spec = self.a.spec
        if spec.mode == Mode.SYNC:
            return self.step >= spec.steps
        # Async: stop once the shards applied the job's updates; never push more than all of them.
        return self.version >= spec.target_version or self.step >= spec.target_version

    async def train(
        self,
        report: Callable[[StepReport], Awaitable[None]],
        report_eval: Callable[[int, EvalResult], Awaitable[None]],
    ) -> None:
        a = self.a
        self.links = [
            ShardLink(
                a.job_id,
                a.worker_id,
                a.membership_epoch,
                i,
                address,
                a.shard_map,
                self.flat.params,
                a.spec.step_timeout_s,
            )
            for i, address in enumerate(a.shard_addresses)
        ]
        await asyncio.gather(*(link.open() for link in self.links))
        await asyncio.gather(*(link.pull(0) for link in self.links))
        last_report = 0.0
        spec = self.a.spec
        # Rank 0 evaluates the parameters it just received every `eval_every` versions.
        evaluates = spec.eval_every > 0 and self.a.rank == 0
        evaluated_upto = 0
        last_exchange_s = 0.0
        while not self._done():
            started = time.perf_counter()
            idx = batch_indices(self.partition, spec.batch_size, self.step, spec.seed, self.a.rank)
            x, y = self.dataset.train_x[idx], self.dataset.train_y[idx]
            loss = await asyncio.to_thread(compute_gradient, self.flat, x, y)
            extra = self.straggler.extra_seconds(time.perf_counter() - started + last_exchange_s)
            if extra > 0:
                await asyncio.sleep(extra)
            push_id = f"{self.a.worker_id}:{self.step}"
            exchange_started = time.perf_counter()
            await asyncio.gather(*(link.push(push_id, self.step, self.flat.grads, len(idx)) for link in self.links))
            last_exchange_s = time.perf_counter() - exchange_started
            self.step += 1
            self.samples += len(idx)
            now = time.perf_counter()
            if now - last_report >= PROGRESS_INTERVAL_S or self._done():
                last_report = now
                await report(StepReport(self.step, self.samples, loss, now - started, self.version))
            if evaluates and self.version // spec.eval_every > evaluated_upto and not self._done():
                evaluated_upto = self.version // spec.eval_every
                data = self.dataset
                await report_eval(
                    self.version, await asyncio.to_thread(evaluate, self.flat.model, data.val_x, data.val_y)
                )

    async def evaluate_latest(self) -> tuple[int, EvalResult]:
        """Pulls the shards' current parameters and evaluates them on the validation split."""
        await asyncio.gather(*(link.pull(0) for link in self.links))
        result = await asyncio.to_thread(evaluate, self.flat.model, self.dataset.val_x, self.dataset.val_y)
        return self.version, result

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links), return_exceptions=True)
