"""A coordinator, a shard holding a job and a worker, served in-process for fuzzing.

Each runs its real servicer behind a real grpc.aio server (create_server: the guard, the
metrics interceptor) on loopback, in one event loop on a background thread; tests call
them with ordinary blocking gRPC clients. The shard's job is built exactly as a shard
builds it from the coordinator's AssignShard, so pushes reach the real validation code.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from prometheus_client import CollectorRegistry

from tidal.coordinator.control import Control
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.rest import create_app
from tidal.coordinator.servicer import CoordinatorServicer
from tidal.core import commands
from tidal.core.job_records import Job
from tidal.core.plan import job_dataset_info, job_model, job_shard_map
from tidal.core.spec import parse_job_spec
from tidal.shard.convert import build_state
from tidal.shard.main import ShardNode
from tidal.shard.metrics import ShardMetrics
from tidal.shard.runtime import ShardRuntime
from tidal.shard.servicer import ShardServicer, add_to_server
from tidal.transport.metrics import GrpcMetricsInterceptor
from tidal.transport.server import CHANNEL_OPTIONS, add_health_and_reflection, create_server, set_health
from tidal.transport.settings import ServiceSettings
from tidal.transport.tls import SecurityConfig
from tidal.v1 import coordinator_pb2_grpc as coord_grpc
from tidal.v1 import worker_pb2_grpc as worker_grpc
from tidal.worker.main import WorkerNode
from tidal.worker.metrics import WorkerMetrics

JOB_ID = "fuzz-1"
WORKER_ID = "worker-0-fuzz00"
EPOCH = 1
SPEC = {
    "name": "fuzz",
    "mode": "sync",
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "num_workers": 1,
    "num_shards": 1,
    "steps": 1000,
    # A pull or an open that waits for a future version or epoch gives up quickly.
    "step_timeout_s": 0.05,
}


@dataclass
class _Session:
    member_id: str = WORKER_ID


class InProcessCluster:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-servers", daemon=True)
        self._thread.start()
        self._servers: list[grpc.aio.Server] = []
        self.addresses: dict[str, str] = {}
        self.call(self._start())

    def call(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _serve(self, name: str, add: Any, service: str) -> None:
        registry = CollectorRegistry()
        server, port = create_server("127.0.0.1:0", SecurityConfig(), [GrpcMetricsInterceptor(registry)])
        add(server)
        health = add_health_and_reflection(server, [service])
        await server.start()
        await set_health(health, [service], serving=True)
        self._servers.append(server)
        self.addresses[name] = f"127.0.0.1:{port}"

    async def _start(self) -> None:
        self.control = Control(CoordinatorCounters(CollectorRegistry()), 1.0, 30.0)
        self.rest_app = create_app(self.control, SecurityConfig())
        spec = parse_job_spec(json.dumps(SPEC))
        model = job_model(spec, job_dataset_info(spec))
        shard_map = job_shard_map(spec, model)
        job = Job(JOB_ID, spec, shard_map, created_at=0.0, membership_epoch=EPOCH, worker_ids=[WORKER_ID])
        assign = commands.AssignShard("shard", job, 0)
        self.shard_map = shard_map
        state = build_state(assign)
        # The shard's initial parameters, as the job's first worker sends them.
        state.initialize(WORKER_ID, EPOCH, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        self.runtime = ShardRuntime(JOB_ID, state, ShardMetrics(CollectorRegistry()).for_job(JOB_ID, "sync", 0))
        servicer = CoordinatorServicer(self.control)
        await self._serve(
            "coordinator", lambda s: coord_grpc.add_CoordinatorServicer_to_server(servicer, s), "tidal.v1.Coordinator"
        )
        # The real ShardNode, holding the job as if the coordinator had assigned it (it never
        # talks to a coordinator here: no session is opened and no checkpoints are written).
        node = ShardNode(None, ShardMetrics(CollectorRegistry()))  # type: ignore[arg-type]
        node.runtime = node.last_runtime = self.runtime
        shard = ShardServicer(node, shared_memory=True)
        await self._serve("shard", lambda s: add_to_server(shard, s), "tidal.v1.ParameterShard")
        settings = ServiceSettings(SecurityConfig(), shared_memory=True)
        worker = WorkerNode(_Session(), 1.0, WorkerMetrics(CollectorRegistry()), settings)  # type: ignore[arg-type]
        await self._serve("worker", lambda s: worker_grpc.add_WorkerServicer_to_server(worker, s), "tidal.v1.Worker")

    def params_bits(self) -> torch.Tensor:
        """The shard's parameters as raw bits (NaN-safe, bit-for-bit comparison)."""
        return self.call(self._params_bits())

    async def _params_bits(self) -> torch.Tensor:
        params = self.runtime.state.params
        return params.detach().clone().view(torch.int32 if params.element_size() == 4 else torch.int64)

    def channel(self, name: str) -> grpc.Channel:
        return grpc.insecure_channel(self.addresses[name], options=CHANNEL_OPTIONS)

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                await server.stop(0)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
