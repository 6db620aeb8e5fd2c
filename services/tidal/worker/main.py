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

from tidal.core.errors import TidalError
from tidal.core.spec import parse_job_spec
from tidal.core.training import EvalResult
from tidal.transport import serde
from tidal.transport.member import MemberPorts, serve_member
from tidal.transport.metrics import GrpcMetricsInterceptor
from tidal.transport.server import create_server
from tidal.transport.session import MemberSession
from tidal.transport.settings import ServiceSettings
from tidal.transport.supervise import cancel_and_wait
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import worker_pb2 as worker_pb
from tidal.v1 import worker_pb2_grpc as worker_grpc
from tidal.worker.loop import Assignment, StepReport, TrainingRun
from tidal.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)
SERVICE_NAMES = [worker_pb.DESCRIPTOR.services_by_name["Worker"].full_name]


def assignment_from_proto(member_id: str, msg: coord_pb.AssignWorker) -> Assignment:
    return Assignment(
        job_id=msg.job_id,
        worker_id=member_id,
        spec=parse_job_spec(msg.spec_json),
        rank=msg.rank,
        world_size=msg.world_size,
        membership_epoch=msg.membership_epoch,
        shard_map=serde.shard_map_from_proto(msg.shard_map),
        shard_addresses=list(msg.shard_addresses),
        worker_ids=tuple(msg.worker_ids),
    )


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
        # The latest membership change of the job being set up, applied once its run exists.
        self._membership: coord_pb.MembershipChanged | None = None
        # The worker_finished report of the current job, sent again after a session resumes.
        self._finished: coord_pb.SessionRequest | None = None

    async def GetWorkerInfo(
        self, request: worker_pb.GetWorkerInfoRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb.GetWorkerInfoResponse:
        run = self.run
        return worker_pb.GetWorkerInfoResponse(
            member_id=self.session.member_id,
            job_id=run.a.job_id if run else "",
            rank=run.a.rank if run else 0,
            step=run.step if run else 0,
            param_version=max(run.version, 0) if run else 0,
            slowdown=self.slowdown,
        )

    async def on_command(self, msg: coord_pb.SessionResponse) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "assign_worker":
            await self.release()
            assign = msg.assign_worker
            self._task = asyncio.create_task(self._guard(assign.job_id, lambda: self._train(assign)))
        elif kind == "membership_changed":
            self._membership = msg.membership_changed
            self._apply_membership()
        elif kind == "shard_moved" and self.run and self.run.a.job_id == msg.shard_moved.job_id:
            log.info("job %s: shard %d restored at %s", msg.shard_moved.job_id, msg.shard_moved.shard_index,
                     msg.shard_moved.address)  # fmt: skip
            self.run.shard_moved(msg.shard_moved.shard_index, msg.shard_moved.address)
        elif kind == "evaluate" and self.run and self.run.a.job_id == msg.evaluate.job_id:
            run, final = self.run, msg.evaluate.final
            self._task = asyncio.create_task(self._guard(msg.evaluate.job_id, lambda: self._evaluate(run, final)))
        elif kind == "release_job" and self.run and self.run.a.job_id == msg.release_job.job_id:
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
        self.run = self._task = None
        self._membership = self._finished = None

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
            await self._send(coord_pb.SessionRequest(task_failed=coord_pb.TaskFailed(job_id=job_id, message=str(exc))))

    async def _train(self, assign: coord_pb.AssignWorker) -> None:
        assignment = assignment_from_proto(self.session.member_id, assign)
        metrics = self.metrics.for_job(assign.job_id, assignment.spec.mode.value, self.session.member_id)
        self.metrics.slowdown.labels(self.session.member_id).set(self.slowdown)
        self.run = run = await asyncio.to_thread(TrainingRun, assignment, self.slowdown, metrics, self.settings)
        self._apply_membership()  # a change that arrived while the run was being built
        log.info(
            "job %s: rank %d of %d, %d training samples",
            assign.job_id,
            assign.rank,
            assign.world_size,
            len(run.partition),
        )

        async def report(r: StepReport) -> None:
            await self._send(
                coord_pb.SessionRequest(
                    worker_progress=coord_pb.WorkerProgress(
                        job_id=assign.job_id,
                        step=r.step,
                        samples=r.samples,
                        loss=r.loss,
                        step_time_s=r.step_time_s,
                        param_version=r.param_version,
                        pushes=run.pushes,
                    )
                )
            )

        await run.train(report, lambda version, result: self._report_eval(assign.job_id, version, result, False))
        self._finished = coord_pb.SessionRequest(
            worker_finished=coord_pb.WorkerFinished(
                job_id=assign.job_id, steps=run.step, samples=run.samples, pushes=run.pushes
            )
        )
        await self._send(self._finished)

    async def _evaluate(self, run: TrainingRun, final: bool) -> None:
        version, result = await run.evaluate_latest()
        await self._report_eval(run.a.job_id, version, result, final)

    async def _report_eval(self, job_id: str, version: int, result: EvalResult, final: bool) -> None:
        await self._send(
            coord_pb.SessionRequest(
                eval_report=coord_pb.EvalReport(
                    job_id=job_id, version=version, val_loss=result.loss, val_accuracy=result.accuracy, final=final
                )
            )
        )

    async def _send(self, msg: coord_pb.SessionRequest) -> None:
        await self.session.send(msg)


async def run_worker(
    coordinator: str,
    host: str,
    port: int,
    metrics_port: int,
    slowdown: float,
    ready_file: Path | None,
    register_timeout_s: float,
    exit_after_job: bool = False,
    *,
    settings: ServiceSettings,
) -> int:
    registry = CollectorRegistry()
    security = settings.security
    server, bound_port = create_server(f"{host}:{port}", security, [GrpcMetricsInterceptor(registry)])
    session = MemberSession(coordinator, common_pb.ROLE_WORKER, security, name=socket.gethostname())
    node = WorkerNode(session, slowdown, WorkerMetrics(registry), settings)
    worker_grpc.add_WorkerServicer_to_server(node, server)
    ports = MemberPorts(host, bound_port, metrics_port)
    return await serve_member(
        "worker", server, ports, registry, session, node, SERVICE_NAMES, ready_file, register_timeout_s, exit_after_job,
        security=security,
    )  # fmt: skip
