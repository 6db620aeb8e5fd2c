"""GET /healthz on the /metrics server: the gRPC health of the whole server, for cheap probes.

A gRPC health check needs a gRPC client (a Python process importing grpc, or a CLI that
imports far more); Kubernetes' own gRPC probe cannot present a client certificate. The /metrics
server already listens with the service's TLS certificate and takes connections without a
client certificate (Prometheus scrapes it with the CA alone), so it answers this one path too:

  200 SERVING       the gRPC server's overall status ("") is SERVING
  503 NOT_SERVING   anything else: starting, not yet registered, or draining after SIGTERM

The body is that one word and nothing else: no version, no member id, no job. The answer is
read from the same `ServerHealth` that gRPC's Health/Check answers from, so both always agree.
`tidal-probe` (tidal/probe.py) and Kubernetes' `httpGet` probes (scheme HTTPS) call it.
"""

from __future__ import annotations

from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

HEALTH_PATH = "/healthz"


class Serving(Protocol):
    serving: bool


def with_health(app: ASGIApp, health: Serving) -> ASGIApp:
    """`app` with GET/HEAD /healthz answered from `health.serving`; every other request goes to `app`."""

    async def routed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != HEALTH_PATH:
            await app(scope, receive, send)
            return
        status, body = (200, b"SERVING\n") if health.serving else (503, b"NOT_SERVING\n")
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]
        if scope["method"] not in ("GET", "HEAD"):
            status, body = 405, b"GET or HEAD\n"
            headers.append((b"allow", b"GET, HEAD"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return routed
