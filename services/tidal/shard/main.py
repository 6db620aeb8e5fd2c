"""The parameter shard process: a gRPC server plus one loop over coordinator commands."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from tidal.core.errors import TidalError
from tidal.core.plan import job_dataset_info, job_model
from tidal.core.shard_state import ShardState
from tidal.core.spec import parse_job_spec
from tidal.shard.metrics import ShardMetrics
from tidal.shard.runtime import ShardRuntime
from tidal.shard.servicer import ShardServicer
from tidal.transport import serde
from tidal.transport.member import MemberPorts, serve_member
from tidal.transport.metrics import GrpcMetricsInterceptor
from tidal.transport.server import create_server
from tidal.transport.session import MemberSession
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import shard_pb2
from tidal.v1 import shard_pb2_grpc as shard_grpc

log = logging.getLogger(__name__)
SERVICE_NAMES = [shard_pb2.DESCRIPTOR.services_by_name["ParameterShard"].full_name]
# Progress reports are sent at most this often, in seconds, and once more after the last change.
PROGRESS_INTERVAL_S = 0.1


def build_state(assign: coord_pb.AssignShard) -> ShardState:
    spec = parse_job_spec(assign.spec_json)
    shard_map = serde.shard_map_from_proto(assign.shard_map)
    model = job_model(spec, job_dataset_info(spec))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    if flat.numel() != shard_map.total_elements:
        raise TidalError(f"shard_map: covers {shard_map.total_elements} elements, the model has {flat.numel()}")
    start, end = shard_map.ranges[assign.shard_index]
    return ShardState(
        spec, assign.shard_index, shard_map, flat[start:end].clone(), assign.membership_epoch, assign.worker_ids
    )


class ShardNode:
    """Carries out the coordinator's commands for this shard."""

    def __init__(self, session: MemberSession, metrics: ShardMetrics) -> None:
        self.session = session
        self.metrics = metrics
        self.runtime: ShardRuntime | None = None
        self.last_runtime: ShardRuntime | None = None
        self._reporter: asyncio.Task[None] | None = None

    async def on_command(self, msg: coord_pb.SessionResponse) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "assign_shard":
            await self._assign(msg.assign_shard)
        elif kind == "membership_changed" and self.runtime and self.runtime.job_id == msg.membership_changed.job_id:
            change = msg.membership_changed
            await self.runtime.set_membership(change.membership_epoch, list(change.worker_ids))
        elif kind == "release_job" and self.runtime and self.runtime.job_id == msg.release_job.job_id:
            await self.release(msg.release_job.reason or "released")

    async def _assign(self, assign: coord_pb.AssignShard) -> None:
        if self.runtime is not None:
            await self.release("replaced by a new assignment")
        try:
            state = await asyncio.to_thread(build_state, assign)
            metrics = self.metrics.for_job(assign.job_id, state.spec.mode.value, assign.shard_index)
            self.runtime = self.last_runtime = ShardRuntime(assign.job_id, state, metrics)
        except TidalError as exc:
            log.error("job %s: cannot set up shard %d: %s", assign.job_id, assign.shard_index, exc)
            await self.session.send(
                coord_pb.SessionRequest(task_failed=coord_pb.TaskFailed(job_id=assign.job_id, message=str(exc)))
            )
            return
        log.info("job %s: shard %d holds %d elements", assign.job_id, assign.shard_index, self.runtime.state.numel)
        await self.session.send(
            coord_pb.SessionRequest(shard_ready=coord_pb.ShardReady(job_id=assign.job_id, version=0))
        )
        self._reporter = asyncio.create_task(self._report_progress(self.runtime))

    async def release(self, reason: str = "shard shutting down") -> None:
        if self._reporter:
            self._reporter.cancel()
        if self.runtime:
            await self.runtime.close(reason)
        self.runtime = self._reporter = None  # last_runtime keeps the final parameters readable

    async def resume(self, resumed: bool) -> None:
        """After the coordinator session was reopened: a shard the coordinator no longer
        knows drops its job; one that resumed reports its progress again at once."""
        if not resumed:
            await self.release("the coordinator registered this shard as a new member")
        elif self.runtime is not None:
            if self._reporter:
                self._reporter.cancel()
            self._reporter = asyncio.create_task(self._report_progress(self.runtime))

    async def _report_progress(self, runtime: ShardRuntime) -> None:
        last: tuple[int, ...] = ()
        while True:
            state = runtime.state
            c = state.counters
            now = (state.version, c.updates_applied, c.updates_rejected)
            if now != last:
                last = now
                await self.session.send(
                    coord_pb.SessionRequest(
                        shard_progress=coord_pb.ShardProgress(
                            job_id=runtime.job_id,
                            version=state.version,
                            updates_applied=c.updates_applied,
                            updates_rejected=c.updates_rejected,
                            staleness_sum=c.staleness.total,
                            staleness_count=c.staleness.count,
                            staleness_max=c.staleness.maximum,
                        )
                    )
                )
            await asyncio.sleep(PROGRESS_INTERVAL_S)


async def run_shard(
    coordinator: str,
    host: str,
    port: int,
    metrics_port: int,
    advertise_host: str,
    ready_file: Path | None,
    register_timeout_s: float,
    exit_after_job: bool = False,
) -> int:
    registry = CollectorRegistry()
    server, bound_port = create_server(f"{host}:{port}", [GrpcMetricsInterceptor(registry)])
    session = MemberSession(
        coordinator, common_pb.ROLE_SHARD, address=f"{advertise_host}:{bound_port}", name=socket.gethostname()
    )
    node = ShardNode(session, ShardMetrics(registry))
    shard_grpc.add_ParameterShardServicer_to_server(ShardServicer(node), server)
    ports = MemberPorts(host, bound_port, metrics_port)
    return await serve_member(
        "shard", server, ports, registry, session, node, SERVICE_NAMES, ready_file, register_timeout_s, exit_after_job
    )
