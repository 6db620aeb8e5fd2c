"""The coordinator process: gRPC and REST on one event loop, plus the control loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from tidal.config import ENV
from tidal.coordinator.control import TICK_S, Control
from tidal.coordinator.metrics import ControlCollector, CoordinatorCounters
from tidal.coordinator.one_job import OneJob, run_one_job
from tidal.coordinator.rest import create_app
from tidal.coordinator.servicer import CoordinatorServicer
from tidal.coordinator.store import StateStore
from tidal.core.faults import CRASH_CONTROL_LOOP, parse_coordinator_fault
from tidal.transport.http import serve_asgi
from tidal.transport.limits import SHUTDOWN_GRACE_S
from tidal.transport.metrics import GrpcMetricsInterceptor, PreferredPort, build_info, port_in_use, serve_metrics
from tidal.transport.process import stop_on_signals, write_ready_file
from tidal.transport.scrape_targets import publish_metrics, withdraw
from tidal.transport.server import add_health_and_reflection, create_server, set_health
from tidal.transport.supervise import Supervisor
from tidal.transport.tls import SecurityConfig
from tidal.v1 import coordinator_pb2
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

log = logging.getLogger(__name__)
SERVICE_NAMES = [coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name]


async def _crash_after_a_tick() -> None:
    await asyncio.sleep(TICK_S)
    raise RuntimeError(f"fault injected ({CRASH_CONTROL_LOOP})")


async def run_coordinator(
    host: str,
    port: int,
    http_port: int,
    metrics_port: int | PreferredPort,
    heartbeat_interval_s: float,
    heartbeat_timeout_s: float,
    ready_file: Path | None,
    one_job: OneJob | None = None,
    state_dir: Path | None = None,
    fault: str = "",
    *,
    security: SecurityConfig,
    scrape_target_dir: Path | None = None,
) -> int:
    """Serves until SIGTERM/SIGINT, or until a supervised task crashed; returns the exit code.
    Every server is secured by `security`; `fault` is for tests only (core/faults.py:
    CRASH_CONTROL_LOOP makes the control loop raise after a tick, as a bug in it would)."""
    parse_coordinator_fault(fault)
    registry = CollectorRegistry()
    build_info(registry, "coordinator")
    store = StateStore(state_dir) if state_dir is not None else None
    control = Control(CoordinatorCounters(registry), heartbeat_interval_s, heartbeat_timeout_s, store)
    registry.register(ControlCollector(control))
    server, grpc_port = create_server(f"{host}:{port}", security, [GrpcMetricsInterceptor(registry)])
    coord_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(control), server)
    health = add_health_and_reflection(server, SERVICE_NAMES)
    await set_health(health, SERVICE_NAMES, serving=False)
    await server.start()
    stop = stop_on_signals()
    # A crash of any of these stops the coordinator, which then exits non-zero.
    supervisor = Supervisor(stop)
    supervisor.spawn("control loop", _crash_after_a_tick() if fault == CRASH_CONTROL_LOOP else control.run())
    try:
        try:
            rest, rest_task, http_port = serve_asgi(create_app(control, security), host, http_port, security)
        except OSError as exc:
            raise port_in_use(exc, host, http_port, "--http-port", ENV["http_port"]) or exc from None
        requested_metrics_port = metrics_port
        metrics, metrics_task, metrics_port = serve_metrics(registry, host, metrics_port, security, health=health)
        target = publish_metrics(scrape_target_dir, "coordinator", host, requested_metrics_port, metrics_port)
    except BaseException:
        await server.stop(None)  # a port in use ends the process with one line, the gRPC server closed first
        raise
    supervisor.watch("REST server", rest_task)
    supervisor.watch("metrics server", metrics_task)
    job_task = supervisor.spawn("one-job", run_one_job(control, one_job, stop), may_end=True) if one_job else None
    if job_task is not None and one_job is not None and one_job.exit_when_done:
        job_task.add_done_callback(lambda _: stop.set())
    code = 0
    try:
        await set_health(health, SERVICE_NAMES, serving=True)
        ports = {"grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port}
        write_ready_file(ready_file, {"role": "coordinator", **ports})
        log.info(
            "coordinator serving gRPC on %s:%d, REST on %s://%s:%d, metrics on %s://%s:%d/metrics",
            host, grpc_port, security.http_scheme, host, http_port, security.http_scheme, host, metrics_port,
        )  # fmt: skip
        await stop.wait()
        if job_task is not None and one_job is not None and one_job.exit_when_done:
            if not job_task.done():
                # SIGTERM while the one-job mode waits for it after scaling down: its result is due at once.
                await asyncio.wait({job_task}, timeout=1.0)
            if job_task.done() and not job_task.cancelled() and job_task.exception() is None:
                code = job_task.result()
    finally:
        await set_health(health, SERVICE_NAMES, serving=False)
        control.begin_shutdown()
        rest.should_exit = metrics.should_exit = True
        withdraw(target)
        await server.stop(SHUTDOWN_GRACE_S)
        await supervisor.close()
        control.close()
    return 1 if supervisor.failed else code
