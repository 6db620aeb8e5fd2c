"""Prometheus plumbing shared by every service: the /metrics endpoint and gRPC metrics.

Each service passes in its own `CollectorRegistry` (never the global default), so tests
get a fresh one. /metrics is served by uvicorn on the service's own event loop, so
collectors read service state without locks or torn snapshots.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app

from tidal import __version__
from tidal.config import ENV
from tidal.core.errors import FailedPreconditionError
from tidal.transport.health_http import Serving, with_health
from tidal.transport.http import EmbeddedServer, serve_asgi
from tidal.transport.tls import SecurityConfig

# Seconds; covers sub-millisecond unary calls to minute-long streams.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferredPort:
    """A role's default /metrics port, used when free; when another process holds it (a second
    shard or worker on the host), any free port is used instead and logged."""

    port: int


def port_in_use(exc: OSError, host: str, port: int, flag: str, env: str) -> FailedPreconditionError | None:
    """The one-line error for a port another process holds (None for any other OSError)."""
    if exc.errno != errno.EADDRINUSE:
        return None
    return FailedPreconditionError(
        f"{flag} / {env}: port {port} on {host} is already in use (another tidal service on this host?); "
        f"choose another port, or 0 for any free one"
    )


def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int | PreferredPort,
    security: SecurityConfig,
    *,
    health: Serving | None,
) -> tuple[EmbeddedServer, asyncio.Task[None], int]:
    """Serves /metrics on `host:port`, and /healthz from `health` (transport/health_http.py) unless
    None; a port held by another process is a one-line error naming --metrics-port, or, for a
    PreferredPort, a free port instead."""
    app = make_asgi_app(registry)
    if health is not None:
        app = with_health(app, health)
    wanted = port.port if isinstance(port, PreferredPort) else port
    try:
        return serve_asgi(app, host, wanted, security)
    except OSError as exc:
        error = port_in_use(exc, host, wanted, "--metrics-port", ENV["metrics_port"])
        if error is None:
            raise
        if not isinstance(port, PreferredPort):
            raise error from None
    served = serve_asgi(app, host, 0, security)
    log.warning(
        "metrics port %d is in use (another tidal service on this host?): /metrics is on port %d instead "
        "(--metrics-port / %s chooses it)", wanted, served[2], ENV["metrics_port"],
    )  # fmt: skip
    return served


def build_info(registry: CollectorRegistry, role: str) -> None:
    Gauge(
        "tidal_build_info", "tidal version of this process (always 1)", ["version", "role"], registry=registry
    ).labels(__version__, role).set(1)


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "BIDI_STREAM"
    if handler.request_streaming:
        return "CLIENT_STREAM"
    return "SERVER_STREAM" if handler.response_streaming else "UNARY"


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """grpc_server_started_total, grpc_server_handled_total and grpc_server_handling_seconds,
    named and labelled as go-grpc-prometheus does, so existing dashboards work."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_service", "grpc_method", "grpc_type"]
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", labels, registry=registry)
        self.handled = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, by status code.", [*labels, "grpc_code"],
            registry=registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "grpc_server_handling_seconds", "Time from the start of an RPC to its end, in seconds.", labels,
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        labels = (service, method, _rpc_type(handler))
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, labels), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, labels),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, labels),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, labels), handler.request_deserializer, handler.response_serializer
        )

    def _finish(
        self,
        labels: tuple[str, str, str],
        started: float,
        context: grpc.aio.ServicerContext,
        error: BaseException | None,
    ) -> None:
        code = context.code()
        if code is None:
            if isinstance(error, asyncio.CancelledError):
                code = grpc.StatusCode.CANCELLED
            elif error is not None and not isinstance(error, grpc.aio.AbortError):
                code = grpc.StatusCode.UNKNOWN
            else:
                code = grpc.StatusCode.OK
        self.handled.labels(*labels, code.name).inc()
        self.seconds.labels(*labels).observe(time.perf_counter() - started)

    def _wrap_unary(self, behavior: Callable[..., Any], labels: tuple[str, str, str]) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.started.labels(*labels).inc()
            started, error = time.perf_counter(), None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._finish(labels, started, context, error)

        return wrapped

    def _wrap_stream(self, behavior: Callable[..., Any], labels: tuple[str, str, str]) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self.started.labels(*labels).inc()
            started, error = time.perf_counter(), None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._finish(labels, started, context, error)

        return wrapped
