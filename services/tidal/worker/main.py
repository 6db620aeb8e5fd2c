"""The worker process: a small gRPC server (health, info) plus one loop over commands."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from tidal.core import commands, events
from tidal.core.errors import TidalError
from tidal.core.training import EvalResult
from tidal.transport.member import MemberPorts, serve_member
from tidal.transport.metrics import GrpcMetricsInterceptor, PreferredPort
from tidal.transport.server import create_server
from tidal.transport.session import MemberSession
from tidal.transport.settings import ServiceSettings
from tidal.transport.supervise import cancel_and_wait
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import worker_pb2 as worker_pb
from tidal.v1 import worker_pb2_grpc as worker_grpc
from tidal.worker.convert import assignment_from_command, worker_info_to_proto
from tidal.worker.loop import StepReport, TrainingRun, data_slot
from tidal.worker.metrics import WorkerMetrics
from tidal.worker.prepare import PreparedJob, in_daemon_thread, prepare_job

log = logging.getLogger(__name__)
SERVICE_NAMES = [worker_pb.DESCRIPTOR.services_by_name["Worker"].full_name]


class WorkerNode(worker_grpc.WorkerServicer):
    """Carries out the coordinator's commands for this worker and answers GetWorkerInfo."""

    def __init__(
        self, session: MemberSession, slowdown: float, metrics: WorkerMetrics, settings: ServiceSettings
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.session = session
        self.slowdown = slowdown
        self.run: TrainingRun | None = None
        self._task: asyncio.Task[None] | None = None
        # The job this worker prepares or prepared (PrepareWorker), and what it built for it.
        self._preparing = ""
        self._prepared: PreparedJob | None = None
        # The latest membership change of the job being set up, applied once its run exists.
        self._membership: commands.ChangeMembership | None = None
        # The worker_finished report of the current job, sent again after a session resumes.
        self._finished: events.WorkerFinished | None = None

    async def GetWorkerInfo(
        self, request: worker_pb.GetWorkerInfoRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb.GetWorkerInfoResponse:
        slowdown = self.run.straggler.slowdown if self.run else self.slowdown
        return worker_info_to_proto(self.session.member_id, self.run, slowdown)

    async def on_command(self, command: commands.Command) -> None:
        run = self.run
        match command:
            case commands.PrepareWorker() if command.job.job_id == self._preparing:
                # Repeated after the session resumed: the report may have been lost with it.
                if self._prepared is not None:
                    await self._send(events.LayoutReport(self._preparing, self._prepared.layout))
            case commands.PrepareWorker():
                await self.release()
                prepare = command
                self._preparing = prepare.job.job_id
                self._task = asyncio.create_task(self._guard(self._preparing, lambda: self._prepare(prepare)))
            case commands.AssignWorker():
                job_id = command.job.job_id
                # What PrepareWorker built for this job; a worker joining a running job builds it now.
                prepared = self._prepared if self._prepared is not None and self._prepared.job_id == job_id else None
                await self.release()
                assign = command
                self._task = asyncio.create_task(self._guard(job_id, lambda: self._train(assign, prepared)))
            case commands.ChangeMembership():
                self._membership = command
                self._apply_membership()
            case commands.MoveShard() if run and run.a.job_id == command.job_id:
                log.info("job %s: shard %d restored at %s", command.job_id, command.shard_index, command.shard_address)
                run.shard_moved(command.shard_index, command.shard_address)
            case commands.Evaluate() if run and run.a.job_id == command.job_id:
                final = command.final
                self._task = asyncio.create_task(self._guard(command.job_id, lambda: self._evaluate(run, final)))
            case commands.Release() if command.job_id in (run.a.job_id if run else "", self._preparing):
                await self.release()

    def _apply_membership(self) -> None:
        change, run = self._membership, self.run
        if change is None or run is None or run.a.job_id != change.job_id:
            return
        if change.membership_epoch > run.epoch:
            run.set_membership(change.membership_epoch, tuple(change.worker_ids))

    async def resume(self, resumed: bool) -> None:
        """After the coordinator session was reopened: a worker the coordinator made a new
        member has been dropped from its job and stops it; one that resumed repeats its
        finish report, which may have been lost with the old session."""
        if not resumed:
            log.warning("dropped from its job while away from the coordinator; stopping it")
            await self.release()
        elif self._finished is not None:
            await self._send(self._finished)

    async def release(self) -> None:
        # Waited for: a job's work still unwinding must not overlap the next assignment.
        await cancel_and_wait(self._task)
        if self.run:
            await self.run.close()
        self.run = self._task = self._prepared = None
        self._membership = self._finished = None
        self._preparing = ""

    async def _guard(self, job_id: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Runs job work; a failure is reported to the coordinator, which fails the job. Not
        if the coordinator made this worker a new member meanwhile: the job dropped the old
        one (its shards refuse it), and the new one may be in the same job again."""
        member_id = self.session.member_id
        try:
            await work()  # made here: a task cancelled before it started leaves no coroutine unawaited
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must still fail the job loudly, not hang it
            if isinstance(exc, TidalError):
                log.exception("job %s: %s", job_id, exc)
            else:
                log.exception("job %s: unexpected error", job_id)
            if self.session.member_id != member_id:
                log.warning("job %s: not reported, %s was dropped from the job", job_id, member_id)
                return
            await self._send(events.TaskFailed(job_id, str(exc)))

    async def _prepare(self, command: commands.PrepareWorker) -> None:
        """Builds the job's data and model with this worker's code and reports the layout."""
        job = command.job
        slot = data_slot(self.session.member_id, command.rank, len(job.worker_ids), tuple(job.worker_ids))
        modules, device = self.settings.model_modules, self.settings.device
        prepared = await in_daemon_thread(
            "prepare job", lambda: prepare_job(job.job_id, job.spec, slot, modules, device)
        )
        self._prepared = prepared
        log.info(
            "job %s: prepared, %d parameters in %d tensors",
            job.job_id, prepared.layout.parameters, len(prepared.layout.tensors),
        )  # fmt: skip
        await self._send(events.LayoutReport(job.job_id, prepared.layout))

    async def _train(self, assign: commands.AssignWorker, prepared: PreparedJob | None) -> None:
        assignment = assignment_from_command(assign)
        job_id = assignment.job_id
        metrics = self.metrics.for_job(job_id, assignment.spec.mode.value, self.session.member_id)
        if prepared is None:
            a = assignment
            slot = data_slot(a.worker_id, a.rank, a.world_size, a.worker_ids)
            modules, device = self.settings.model_modules, self.settings.device
            prepared = await in_daemon_thread("prepare job", lambda: prepare_job(job_id, a.spec, slot, modules, device))
        self.run = run = await asyncio.to_thread(
            TrainingRun, assignment, prepared, self.slowdown, metrics, self.settings
        )
        # The factor in force: --slowdown times the job spec's stragglers entry for this rank
        # (the flag alone showed 1.0 for a straggler declared in the spec).
        self.metrics.slowdown.labels(self.session.member_id).set(run.straggler.slowdown)
        self._apply_membership()  # a change that arrived while the run was being built
        log.info(
            "job %s: rank %d of %d, %d training samples",
            job_id,
            assignment.rank,
            assignment.world_size,
            len(run.partition),
        )

        async def report(r: StepReport) -> None:
            await self._send(
                events.WorkerProgressReport(
                    job_id, r.step, r.samples, r.loss, r.step_time_s, run.pushes, param_version=r.param_version
                )
            )

        await run.train(report, lambda version, result: self._report_eval(job_id, version, result, False))
        self._finished = events.WorkerFinished(job_id, run.step, run.samples, run.pushes)
        await self._send(self._finished)

    async def _evaluate(self, run: TrainingRun, final: bool) -> None:
        version, result = await run.evaluate_latest()
        await self._report_eval(run.a.job_id, version, result, final)

    async def _report_eval(self, job_id: str, version: int, result: EvalResult, final: bool) -> None:
        metric = result.metric
        report = events.EvalReport(
            job_id, version, result.loss, result.accuracy, final, metric.name, metric.higher_is_better
        )
        await self._send(report)

    async def _send(self, event: events.Event) -> None:
        await self.session.send(event)


async def run_worker(
    coordinator: str,
    host: str,
    port: int,
    metrics_port: int | PreferredPort,
    slowdown: float,
    ready_file: Path | None,
    register_timeout_s: float,
    exit_after_job: bool = False,
    *,
    name: str = "",
    settings: ServiceSettings,
    scrape_target_dir: Path | None = None,
) -> int:
    registry = CollectorRegistry()
    security = settings.security
    server, bound_port = create_server(f"{host}:{port}", security, [GrpcMetricsInterceptor(registry)])
    session = MemberSession(coordinator, common_pb.ROLE_WORKER, security, name=name or socket.gethostname())
    node = WorkerNode(session, slowdown, WorkerMetrics(registry), settings)
    worker_grpc.add_WorkerServicer_to_server(node, server)
    ports = MemberPorts(host, bound_port, metrics_port)
    return await serve_member(
        "worker", server, ports, registry, session, node, SERVICE_NAMES, ready_file, register_timeout_s, exit_after_job,
        security=security, scrape_target_dir=scrape_target_dir,
    )  # fmt: skip
