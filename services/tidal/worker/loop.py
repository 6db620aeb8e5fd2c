"""One job on one worker: pull, compute, push, report, until the job's target version."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import torch

from tidal.core import eager_optim
from tidal.core.compression import TopK, params_wire_dtype, wire_dtype
from tidal.core.devices import resolve_device
from tidal.core.digests import values_digest
from tidal.core.faults import kill_now
from tidal.core.flat import FlatModel, build_flat_model
from tidal.core.objectives import Objective, job_objective
from tidal.core.optim import build_optimizer
from tidal.core.plan import job_dataset, job_partition
from tidal.core.precision import MixedPrecision
from tidal.core.schedule import lr_factor
from tidal.core.shard_map import ShardMap
from tidal.core.sources.batches import TrainBatches, eval_batches
from tidal.core.sources.job_data import JobData
from tidal.core.sources.prefetch import Prefetcher
from tidal.core.spec import JobSpec, Mode
from tidal.core.stragglers import StragglerProfile
from tidal.core.training import EvalResult, compute_gradient, evaluate
from tidal.transport.settings import ServiceSettings
from tidal.worker.fanout import fan_out
from tidal.worker.links import ShardLink
from tidal.worker.metrics import JobWorkerMetrics, PhaseTimes
from tidal.worker.prepare import PreparedJob, check_layout
from tidal.worker.rows import StepRows, WorkerRows

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
    # The job's live workers by rank (this one included); empty: ranks 0..world_size-1.
    worker_ids: tuple[str, ...] = ()


def data_slot(worker_id: str, rank: int, world_size: int, worker_ids: tuple[str, ...]) -> tuple[int, int]:
    """(partition index, partition count) of a worker. Partitions follow the position in the
    live worker list, so after a loss or a join the live workers again split the whole
    training set among themselves, deterministically (the same list gives the same split)."""
    if worker_id in worker_ids:
        return worker_ids.index(worker_id), len(worker_ids)
    return rank, world_size


class TrainingRun:
    """Everything a worker holds for one job; `train` is the worker's one loop."""

    # Prepares the next training batch while a step runs (set with the partition).
    _batches: Prefetcher[tuple[torch.Tensor, torch.Tensor]] | None = None
    # The job's embedding tables, made in `train` with the links; None: the job has none.
    rows: WorkerRows | None = None

    def __init__(
        self,
        assignment: Assignment,
        prepared: PreparedJob,
        slowdown: float,
        metrics: JobWorkerMetrics,
        settings: ServiceSettings,
    ) -> None:
        """`prepared`: the job's data and model as this worker built them (worker/prepare.py);
        its layout must be the one the shards hold."""
        self.a = assignment
        # The process's security and shared-memory setting, for the links to the shards.
        self.settings = settings
        spec = assignment.spec
        self.metrics = metrics
        check_layout(prepared.layout, assignment.shard_map)
        # A partitioned data set (climate) holds only one slot's part (`_partition` reloads it).
        self.dataset: JobData = prepared.dataset
        # The worker's --device wins over the spec's; the flat host buffers stay on the host.
        field = "--device" if settings.device is not None else "device"
        self.device = resolve_device(settings.device or spec.device, field)
        model = prepared.model
        self.flat: FlatModel = build_flat_model(model, self.device)
        # What each shard's initial slice was, to be checked by the shard (worker/links.py);
        # hashed here, in the thread that builds the run, not on the event loop.
        ranges = assignment.shard_map.ranges
        self._initial_digests = [values_digest([self.flat.params[start:end]]) for start, end in ranges]
        self.precision = MixedPrecision(spec.precision, self.device, model) if spec.precision != "fp32" else None
        self._objective_of: tuple[JobData, Objective] | None = None
        self._objective()  # a bad objective fails the job here, before any step
        log.info("job %s: computing on %s in %s; objective %s, metric %s", assignment.job_id, self.device,
                 spec.precision, spec.objective or "the data set's", self._objective().metric.name)  # fmt: skip
        self.epoch = assignment.membership_epoch
        self.worker_ids = assignment.worker_ids
        self.partition = self._partition()
        declared = spec.straggler(assignment.rank)
        self.straggler = StragglerProfile(
            slowdown * (declared.slowdown if declared else 1.0),
            declared.delay if declared else None,
            seed=spec.seed * 1009 + assignment.rank,
        )
        # Channels belong to the event loop, so links are made in `train`, not here
        # (this constructor runs in a thread: building the model and data takes a while).
        self.links: list[ShardLink] = []
        # Local SGD: the workers' own optimizer and the parameters each round started from.
        self.inner = build_optimizer(spec.optimizer, [self.flat.params]) if spec.mode == Mode.LOCAL_SGD else None
        self._round_start = self.flat.params.clone()
        codec = spec.compression
        self.topk = TopK(self.flat.grads.numel(), codec.topk_ratio) if codec.codec == "topk" else None
        self.step = 0
        self.samples = 0
        self.pushes = 0
        self._last_exchange_s = 0.0
        self._bytes = (0, 0)

    def _partition(self) -> torch.Tensor | None:
        a = self.a
        index, count = data_slot(a.worker_id, a.rank, a.world_size, self.worker_ids)
        if self.dataset.part not in (None, (index, count)):
            # A partitioned data set holds one slot's data: load the new slot's.
            self.dataset = job_dataset(a.spec, index, count, model_modules=self.settings.model_modules)
        partition = job_partition(a.spec, self.dataset, index, count)
        # The next batch is prepared while a step runs; a new partition drops what was fetched ahead.
        spec = a.spec
        batches = TrainBatches(self.dataset, partition, spec.batch_size, spec.seed, a.rank)
        if self._batches is None:
            self._batches = Prefetcher(batches)
        else:
            self._batches.restart(batches)
        return partition

    def set_membership(self, epoch: int, worker_ids: tuple[str, ...]) -> None:
        """The job's workers changed: take the data partition of this worker's new position
        and carry the new epoch from the next push on."""
        self.epoch, self.worker_ids = epoch, worker_ids
        for link in self.links:
            link.epoch = epoch
        if self.rows is not None:
            self.rows.set_epoch(epoch)
        self.partition = self._partition()
        here = "a stream of" if self.partition is None else len(self.partition)
        log.info("job %s: membership epoch %d, %d workers, %s training samples here",
                 self.a.job_id, epoch, len(worker_ids), here)  # fmt: skip

    def _objective(self) -> Objective:
        """The spec's objective (or the data set's own), for the data set held now: a new data
        slot brings its own weights."""
        if self._objective_of is None or self._objective_of[0] is not self.dataset:
            objective = job_objective(self.a.spec.objective, self.dataset.objective, self.settings.model_modules)
            self._objective_of = (self.dataset, objective.on(self.device))
        return self._objective_of[1]

    def _evaluate_now(self) -> EvalResult:
        """Evaluates the host parameters (copied to the device first) on the validation split."""
        self.flat.to_device()
        return evaluate(self.flat.model, eval_batches(self.dataset), self._objective())

    @property
    def evaluator(self) -> bool:
        """Whether this worker runs the periodic evaluations: the first live worker."""
        return self.worker_ids[0] == self.a.worker_id if self.worker_ids else self.a.rank == 0

    @property
    def version(self) -> int:
        return min((link.version for link in self.links), default=-1)

    def _done(self) -> bool:
        spec = self.a.spec
        if spec.mode != Mode.ASYNC:
            # With backup workers a slow worker's late steps are dropped: the shards reach the
            # target before it has taken all its steps, and it must not wait for a barrier
            # that no one else will join.
            return self.step >= spec.steps or self.version >= spec.target_version
        # Async: stop once the shards applied the job's updates; never push more than all of them.
        return self.version >= spec.target_version or self.step >= spec.target_version

    async def train(
        self,
        report: Callable[[StepReport], Awaitable[None]],
        report_eval: Callable[[int, EvalResult], Awaitable[None]],
    ) -> None:
        a = self.a
        upload_turns = asyncio.Lock()  # one push uploads at a time, in shard order (ShardLink)
        self.links = [
            ShardLink(
                a.job_id, a.worker_id, self.epoch, i, address, a.shard_map, self.flat.params,
                a.spec.step_timeout_s, params_wire_dtype(a.spec.compression),
                security=self.settings.security, shared_memory=self.settings.shared_memory,
                bulk_channel=self.settings.bulk_channel, upload_turns=upload_turns,
                initial_digest=self._initial_digests[i],
            )
            for i, address in enumerate(a.shard_addresses)
        ]  # fmt: skip
        await fan_out(*(link.connect(a.spec.step_timeout_s) for link in self.links))
        if a.spec.embeddings:
            # The model's ShardedEmbedding layers read their rows from the shards from now on.
            self.rows = WorkerRows(
                a.spec, a.job_id, a.worker_id, self.epoch, a.shard_addresses, self.flat.model,
                self.settings.security, self.metrics,
            )  # fmt: skip
        if a.spec.mode != Mode.ASYNC:
            # Shards complete a barrier one after the other, so a worker joining mid-run can find
            # them a version apart; it waits until all serve the newest, or it would train on
            # mixed versions and push to each shard for a different barrier (at the end, one
            # barrier more than the others on one shard: a wait no one else joins, seen in CI).
            newest = max(link.version for link in self.links)
            await fan_out(*(link.pull(newest) for link in self.links if link.version < newest))
        self._round_start.copy_(self.flat.params)
        self._count_bytes()
        last_report = 0.0
        spec = a.spec
        # The first live worker evaluates the parameters it just received every `eval_every` versions.
        evaluates = spec.eval_every > 0
        evaluated_upto = 0
        while not self._done():
            loss, step_s = await self._step()
            now = time.perf_counter()
            if now - last_report >= PROGRESS_INTERVAL_S or self._done():
                last_report = now
                await report(StepReport(self.step, self.samples, loss, step_s, self.version))
            if evaluates and self.evaluator and self.version // spec.eval_every > evaluated_upto and not self._done():
                evaluated_upto = self.version // spec.eval_every
                result = await asyncio.to_thread(self._evaluate_now)
                await report_eval(self.version, result)

    async def _step(self) -> tuple[float, float]:
        """Compute (and, in local SGD, step locally), straggle, exchange with every shard when
        the mode says so; returns the loss and the step's wall time."""
        self._inject_kill()
        started = time.perf_counter()
        assert self._batches is not None
        x, y = await asyncio.wrap_future(self._batches.get(self.step))
        loss, step_rows = await asyncio.to_thread(self._compute, x, y)
        compute_s = time.perf_counter() - started
        injected_s = self.straggler.extra_seconds(compute_s + self._last_exchange_s) + self._pause_seconds()

        async def straggle_and_exchange() -> PhaseTimes:
            if injected_s > 0:
                await asyncio.sleep(injected_s)
            if self.inner is None or self._round_ends():
                return await self._exchange(len(y))
            return PhaseTimes()

        if step_rows is not None and self.rows is not None:
            # The rows' gradients go as soon as the backward is done, beside the dense exchange.
            exchange, _ = await fan_out(straggle_and_exchange(), self.rows.push(step_rows))
        else:
            exchange = await straggle_and_exchange()
        done = time.perf_counter()
        self.step += 1
        self.samples += len(y)
        self.metrics.record_step(compute_s, injected_s, exchange, done - started, len(y), loss)
        self.metrics.param_version.set(self.version)
        self._count_bytes()
        return loss, done - started

    def _compute(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[StepRows] | None]:
        """In the compute thread: the step's forward and backward (the embedding layers pull
        their rows meanwhile), the local SGD step, and the step's row gradients."""
        try:
            loss = compute_gradient(self.flat, x, y, self._objective(), self.precision)
        except Exception:
            if self.rows is not None:
                self.rows.forget_step()
            raise
        if self.inner is not None:
            self._inner_step()
        return loss, self.rows.take_step() if self.rows is not None else None

    async def _exchange(self, num_samples: int) -> PhaseTimes:
        """Pushes the gradient (or, in local SGD, the round's delta) to every shard and receives
        the parameters to continue from."""
        # Each shard's own clock (ShardLink.next_clock); local SGD's clock is the round.
        clock = None if self.inner is None else self.step // self.a.spec.consistency.sync_every
        payload = self.flat.grads
        if self.inner is not None:
            # DiLoCo's pseudo-gradient: how far this worker moved from the round's start.
            torch.sub(self._round_start, self.flat.params, out=payload)
        wire = wire_dtype(self.a.spec.compression)
        ranges = [(link.start, link.end) for link in self.links]
        picked: list[torch.Tensor | None] = [None] * len(self.links)
        if self.topk is not None:
            picked = list(self.topk.select(payload, ranges))
            payload = self.topk.residual
        push_id = f"{self.a.worker_id}:{self.step}"
        started = time.perf_counter()
        # Every push goes to every shard, also one that reached the target: the coordinator
        # ends the job once each shard accounted for every push the workers made. A shard that
        # fails for good (after its reconnects) fails the job: the other pushes are cancelled.
        results = await fan_out(
            *(
                link.push_recovering(
                    push_id, clock, payload, num_samples, wire, sparse, self.a.spec.checkpoint.restart_timeout_s
                )
                for link, sparse in zip(self.links, picked, strict=True)
            )
        )
        self._last_exchange_s = time.perf_counter() - started
        self.pushes += 1
        dense_bytes = payload.numel() * payload.element_size()
        if self.topk is not None:
            self.topk.sent(ranges, [p for p in picked if p is not None])
            sent_values = sum(p.numel() for p in picked if p is not None)
            self.metrics.saved.inc(max(0, dense_bytes - sent_values * (payload.element_size() + 4)))
        elif wire is not None:
            self.metrics.saved.inc(dense_bytes - payload.numel() * wire.itemsize)
        if self.inner is not None:
            self._round_start.copy_(self.flat.params)
        return PhaseTimes.slowest([times for _, times in results])

    def _round_ends(self) -> bool:
        spec = self.a.spec
        return (self.step + 1) % spec.consistency.sync_every == 0 or self.step + 1 == spec.steps

    def _inner_step(self) -> None:
        assert self.inner is not None
        spec = self.a.spec
        # Global progress: the rounds the shards completed, times their length, plus this round's steps.
        every = spec.consistency.sync_every
        progress = max(self.version, 0) * every + self.step % every
        self.inner.param_groups[0]["lr"] = spec.optimizer.lr * lr_factor(spec.optimizer.schedule, progress, spec.steps)
        self.flat.params.grad = self.flat.grads
        eager_optim.step(self.inner)
        self.flat.params.grad = None

    def _pause_seconds(self) -> float:
        declared = self.a.spec.straggler(self.a.rank)
        if declared and declared.pause_every and self.step and self.step % declared.pause_every == 0:
            return declared.pause_s
        return 0.0

    def _inject_kill(self) -> None:
        declared = self.a.spec.straggler(self.a.rank)
        if declared and declared.kill_at_step is not None and self.step == declared.kill_at_step:
            kill_now(f"job {self.a.job_id}: worker at step {self.step}, as the spec's stragglers[].kill_at_step asks")

    def _count_bytes(self) -> None:
        sent = sum(link.bytes_sent for link in self.links)
        received = sum(link.bytes_received for link in self.links)
        self.metrics.sent.inc(sent - self._bytes[0])
        self.metrics.received.inc(received - self._bytes[1])
        self._bytes = (sent, received)

    def shard_moved(self, shard_index: int, address: str) -> None:
        """A shard was restored from its checkpoint at `address`: reconnect there."""
        if 0 <= shard_index < len(self.links):
            self.links[shard_index].retarget(address)
        if self.rows is not None:
            self.rows.retarget(shard_index, address)

    async def evaluate_latest(self) -> tuple[int, EvalResult]:
        """Pulls the shards' current parameters and evaluates them on the validation split."""
        restart_s = self.a.spec.checkpoint.restart_timeout_s
        await fan_out(*(link.pull_recovering(0, restart_s) for link in self.links))
        result = await asyncio.to_thread(self._evaluate_now)
        return self.version, result

    async def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
        if self.rows is not None:
            await self.rows.close()  # logs, never raises: the links below are closed whatever happens
        # Not fan_out: every link must be closed (its channel, its shared memory) whatever
        # another's close raised, so all of them run to the end and failures are only logged.
        results = await asyncio.gather(*(link.close() for link in self.links), return_exceptions=True)
        for link, result in zip(self.links, results, strict=True):
            if isinstance(result, Exception):
                log.warning("job %s: closing the link to shard %d: %s", self.a.job_id, link.shard_index, result)
