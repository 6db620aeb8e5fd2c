"""The REST side of the guard: the same tokens and policy as gRPC (core/authz.py).

REST callers authenticate with `Authorization: Bearer <token>`: the HTTP server cannot
hand a verified client certificate's name to the app, so certificates alone do not
authorize REST calls (with mutual TLS on, a client certificate that is sent must still be
signed by the cluster's CA). A route is checked against the rule of the gRPC method it
mirrors (`authz.REST_METHODS`): a worker token cannot POST or DELETE jobs.

`rest_principal` decides from the request line and headers alone; the request gate
(transport/http_gate.py) calls it before a byte of the body is read.
"""

from __future__ import annotations

from tidal.core import authz
from tidal.core.authz import Outcome, Principal
from tidal.core.errors import PermissionDeniedError, UnauthenticatedError
from tidal.transport.guard import authenticate
from tidal.transport.tls import SecurityConfig

# What a REST caller without credentials is told (no mention of certificates: REST takes none).
NO_TOKEN = "authorization: REST needs the header 'Authorization: Bearer <token>'"
NO_TOKEN_TABLE = "authorization: REST needs a bearer token, and this server has no token table (TIDAL_TOKENS_FILE)"


def rest_principal(security: SecurityConfig, method: str, template: str, authorization: str | None) -> Principal | None:
    """The caller of `method` on the route `template`, or UnauthenticatedError / PermissionDeniedError
    (None when authentication is off)."""
    if not security.auth_required:
        return None
    rule = authz.REST_METHODS.get((method, template), f"REST {method} {template}")
    if authorization is None:
        raise UnauthenticatedError(NO_TOKEN if security.tokens is not None else NO_TOKEN_TABLE)
    found = authenticate(security, [("authorization", authorization)], {})
    if not isinstance(found, Principal):
        raise UnauthenticatedError(found.reason if security.tokens is not None else NO_TOKEN_TABLE)
    decision = authz.authorize(found, rule)
    if decision.outcome is Outcome.UNAUTHENTICATED:
        raise UnauthenticatedError(decision.reason)
    if not decision.allowed:
        raise PermissionDeniedError(decision.reason)
    return found
