"""The coordinator process: gRPC and REST on one event loop, plus the control loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from tidal.coordinator.control import Control
from tidal.coordinator.metrics import ControlCollector, CoordinatorCounters
from tidal.coordinator.one_job import OneJob, run_one_job
from tidal.coordinator.rest import create_app
from tidal.coordinator.servicer import CoordinatorServicer
from tidal.coordinator.store import StateStore
from tidal.transport.http import serve_asgi
from tidal.transport.limits import SHUTDOWN_GRACE_S
from tidal.transport.metrics import GrpcMetricsInterceptor, build_info, serve_metrics
from tidal.transport.process import stop_on_signals, write_ready_file
from tidal.transport.server import add_health_and_reflection, create_server, set_health
from tidal.v1 import coordinator_pb2
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

log = logging.getLogger(__name__)
SERVICE_NAMES = [coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name]


async def run_coordinator(
    host: str,
    port: int,
    http_port: int,
    metrics_port: int,
    heartbeat_interval_s: float,
    heartbeat_timeout_s: float,
    ready_file: Path | None,
    one_job: OneJob | None = None,
    state_dir: Path | None = None,
) -> int:
    registry = CollectorRegistry()
    build_info(registry, "coordinator")
    store = StateStore(state_dir) if state_dir is not None else None
    control = Control(CoordinatorCounters(registry), heartbeat_interval_s, heartbeat_timeout_s, store)
    registry.register(ControlCollector(control))
    server, grpc_port = create_server(f"{host}:{port}", [GrpcMetricsInterceptor(registry)])
    coord_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(control), server)
    health = add_health_and_reflection(server, SERVICE_NAMES)
    await set_health(health, SERVICE_NAMES, serving=False)
    await server.start()
    stop = stop_on_signals()
    rest, rest_task, http_port = serve_asgi(create_app(control), host, http_port)
    metrics, metrics_task, metrics_port = serve_metrics(registry, host, metrics_port)
    tasks = [asyncio.create_task(control.run()), rest_task, metrics_task]
    job_task = asyncio.create_task(run_one_job(control, one_job, stop)) if one_job else None
    tasks += [job_task] if job_task else []
    try:
        await set_health(health, SERVICE_NAMES, serving=True)
        ports = {"grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port}
        write_ready_file(ready_file, {"role": "coordinator", **ports})
        log.info(
            "coordinator serving gRPC on %s:%d, REST on http://%s:%d, metrics on http://%s:%d/metrics",
            host, grpc_port, host, http_port, host, metrics_port,
        )  # fmt: skip
        if job_task and one_job and one_job.exit_when_done:
            stop_task = asyncio.create_task(stop.wait())
            tasks.append(stop_task)
            done, _ = await asyncio.wait({job_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if job_task not in done:
                # SIGTERM while the one-job mode waits for it after scaling down: its result is due at once.
                await asyncio.wait({job_task}, timeout=1.0)
            return job_task.result() if job_task.done() else 0
        await stop.wait()
        return 0
    finally:
        await set_health(health, SERVICE_NAMES, serving=False)
        control.begin_shutdown()
        rest.should_exit = metrics.should_exit = True
        await server.stop(SHUTDOWN_GRACE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        control.close()
