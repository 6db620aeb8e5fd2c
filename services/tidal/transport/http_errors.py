"""The one error shape of tidal's HTTP servers and the one mapping from domain errors to it.

Every error answer, whoever produces it (a route, the framework, the request gate, the HTTP
parser in transport/http.py), is `application/json` with the body
{"error": {"code": <gRPC-style code name>, "message": <what to fix>}}, so a client handles
one shape. Codes are the gRPC status names (transport/errors.py), so REST and gRPC agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import Send

from tidal.core import errors

HTTP_STATUS_FOR_ERROR: dict[type[errors.TidalError], tuple[int, str]] = {
    errors.InvalidArgumentError: (400, "INVALID_ARGUMENT"),
    errors.NotFoundError: (404, "NOT_FOUND"),
    errors.AlreadyExistsError: (409, "ALREADY_EXISTS"),
    errors.FailedPreconditionError: (409, "FAILED_PRECONDITION"),
    errors.ResourceExhaustedError: (429, "RESOURCE_EXHAUSTED"),
    errors.UnavailableError: (503, "UNAVAILABLE"),
    errors.DeadlineExceededError: (504, "DEADLINE_EXCEEDED"),
    errors.DataLossError: (500, "DATA_LOSS"),
    errors.InternalError: (500, "INTERNAL"),
    errors.UnauthenticatedError: (401, "UNAUTHENTICATED"),
    errors.PermissionDeniedError: (403, "PERMISSION_DENIED"),
}

# Statuses that the framework or the server pick themselves (unknown route, wrong method,
# body or headers too large), named like the domain's codes.
CODE_FOR_HTTP_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    431: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# Sent with every 401 (RFC 9110): the scheme REST accepts.
UNAUTHENTICATED_HEADERS = {"www-authenticate": "Bearer"}


def http_error_for(exc: errors.TidalError) -> tuple[int, str]:
    """(HTTP status, code) of a domain error; one without a mapping is a bug: 500 INTERNAL."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS_FOR_ERROR:
            return HTTP_STATUS_FOR_ERROR[cls]
    return 500, "INTERNAL"


def code_for_status(status: int) -> str:
    return CODE_FOR_HTTP_STATUS.get(status, "INVALID_ARGUMENT" if status < 500 else "INTERNAL")


def error_content(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_bytes(code: str, message: str) -> bytes:
    return json.dumps(error_content(code, message)).encode()


def headers_for(status: int) -> dict[str, str]:
    return dict(UNAUTHENTICATED_HEADERS) if status == 401 else {}


async def send_error(send: Send, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
    """Answers an ASGI request with the error shape (for code that runs outside the app's handlers)."""
    body = error_bytes(code, message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
