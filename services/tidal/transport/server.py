"""Server and channel factories: every option (message size, keepalive) set in one place."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tidal.config import ENV
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError
from tidal.transport.guard import BearerTokenInterceptor, GuardInterceptor
from tidal.transport.limits import (
    KEEPALIVE_TIME_MS,
    KEEPALIVE_TIMEOUT_MS,
    MAX_MESSAGE_BYTES,
    MAX_RECONNECT_BACKOFF_MS,
    MIN_CONNECT_TIMEOUT_MS,
)
from tidal.transport.tls import SecurityConfig, warn_if_plaintext

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", MIN_CONNECT_TIMEOUT_MS),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
]

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Accept the clients' keepalive pings even between calls.
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


def stream_window_options(window_bytes: int) -> list[tuple[str, int]]:
    """Server options that hold each stream's receive window at `window_bytes`: without them
    gRPC's bandwidth-delay probe grows it until a sender's whole burst is buffered in the
    receiver's memory (a shard's: up to a full push per stream while it waits its turn,
    bench/NOTES.md "Shard memory"); 0: gRPC's default."""
    if window_bytes <= 0:
        return []
    return [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", window_bytes)]


def create_server(
    address: str,
    security: SecurityConfig,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    *,
    stream_window_bytes: int = 0,
) -> tuple[grpc.aio.Server, int]:
    """Creates a grpc.aio server bound to `address` ("host:port"; port 0 picks a free one)
    and returns it with the port actually bound. TLS, mutual TLS and authentication follow
    `security` (transport/tls.py); every call passes the guard (undecodable bytes,
    credentials, authorization: transport/guard.py) after `interceptors`, so metrics count
    refused calls with their status codes. `stream_window_bytes`: `stream_window_options`."""
    options = SERVER_OPTIONS + stream_window_options(stream_window_bytes)
    server = grpc.aio.server(options=options, interceptors=[*interceptors, GuardInterceptor(security)])
    if security.ca_path is not None and not security.tls:
        raise InvalidArgumentError("TLS: a CA is configured but this server has no certificate (TIDAL_TLS_CERT)")
    try:
        if security.tls:
            port = server.add_secure_port(address, security.server_credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc says only "Failed to bind"; the likeliest cause is another process
        raise FailedPreconditionError(
            f"--port / {ENV['port']}: cannot bind {address} (already in use by another process?); "
            "choose another port, or 0 for any free one"
        ) from None
    warn_if_plaintext(security, f"gRPC {address} and its HTTP")
    if port == 0:
        raise OSError(f"could not bind {address}")
    return server, port


def create_channel(address: str, security: SecurityConfig) -> grpc.aio.Channel:
    """A channel to a tidal server, with TLS and a bearer token when `security` has them."""
    interceptors = [BearerTokenInterceptor(security.token)] if security.token else None
    if security.ca_path is None and not security.tls:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)
    options = list(CHANNEL_OPTIONS)
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    return grpc.aio.secure_channel(address, security.channel_credentials(), options=options, interceptors=interceptors)


class ServerHealth(health.aio.HealthServicer):
    """grpc.health.v1 that also keeps whether the server as a whole ("") is SERVING, which the
    /metrics server answers on GET /healthz (transport/health_http.py): probes that cannot
    afford a gRPC client (container healthchecks, Kubernetes' httpGet) read the same status."""

    serving = False

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        await super().set(service, status)
        if service == "":
            self.serving = status == health_pb2.HealthCheckResponse.SERVING

    async def enter_graceful_shutdown(self) -> None:
        self.serving = False
        await super().enter_graceful_shutdown()


def add_health_and_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> ServerHealth:
    """Adds grpc.health.v1 (every service NOT_SERVING until `set_serving`) and reflection."""
    health_servicer = ServerHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    return health_servicer


async def set_health(health_servicer: ServerHealth, service_names: Sequence[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *service_names):
        await health_servicer.set(name, status)
