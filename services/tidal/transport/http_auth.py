"""The REST side of the guard: the same tokens and policy as gRPC (core/authz.py).

REST callers authenticate with `Authorization: Bearer <token>`: the HTTP server cannot
hand a verified client certificate's name to the app, so certificates alone do not
authorize REST calls (with mutual TLS on, a client certificate that is sent must still be
signed by the cluster's CA). A route is checked against the rule of the gRPC method it
mirrors (`authz.REST_METHODS`): a worker token cannot POST or DELETE jobs. Refusals are
401 / 403 JSON bodies from the app's TidalError handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from tidal.core import authz
from tidal.core.authz import Outcome, Principal
from tidal.core.errors import PermissionDeniedError, UnauthenticatedError
from tidal.transport.guard import authenticate
from tidal.transport.tls import SecurityConfig


def rest_guard(security: SecurityConfig) -> Callable[[Request], Awaitable[Principal | None]]:
    """A FastAPI dependency: the caller's principal, or 401/403 (None when auth is off)."""

    async def guard(request: Request) -> Principal | None:
        if not security.auth_required:
            return None
        route = request.scope.get("route")
        template = getattr(route, "path", request.url.path)
        method = authz.REST_METHODS.get((request.method, template), f"REST {request.method} {template}")
        header = request.headers.get("authorization")
        found = authenticate(security, [("authorization", header)] if header is not None else [], {})
        if isinstance(found, Principal):
            decision = authz.authorize(found, method)
        elif security.tokens is None:
            decision = authz.Decision(
                Outcome.UNAUTHENTICATED, "authorization: REST needs a bearer token (TIDAL_TOKENS_FILE)"
            )
        else:
            decision = found
        if decision.outcome is Outcome.UNAUTHENTICATED:
            raise UnauthenticatedError(decision.reason)
        if not decision.allowed:
            raise PermissionDeniedError(decision.reason)
        return found if isinstance(found, Principal) else None

    return guard
