"""The REST API beside gRPC (FastAPI): the same `Control`, JSON in and out.

Bodies are the proto messages rendered with protobuf's JSON mapping (field names as in
the .proto), so REST and gRPC clients see the same shapes. Domain errors become 4xx
responses with a JSON body {"error": {"code": ..., "message": ...}}.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from starlette.exceptions import HTTPException as StarletteHTTPException

from tidal import __version__
from tidal.coordinator.control import Control
from tidal.coordinator.convert import job_to_proto, member_to_proto
from tidal.core import errors
from tidal.transport import tls
from tidal.transport.http_auth import rest_guard
from tidal.transport.tls import SecurityConfig

HTTP_STATUS_FOR_ERROR: dict[type[errors.TidalError], tuple[int, str]] = {
    errors.InvalidArgumentError: (400, "INVALID_ARGUMENT"),
    errors.NotFoundError: (404, "NOT_FOUND"),
    errors.AlreadyExistsError: (409, "ALREADY_EXISTS"),
    errors.FailedPreconditionError: (409, "FAILED_PRECONDITION"),
    errors.ResourceExhaustedError: (429, "RESOURCE_EXHAUSTED"),
    errors.UnavailableError: (503, "UNAVAILABLE"),
    errors.DeadlineExceededError: (504, "DEADLINE_EXCEEDED"),
    errors.DataLossError: (500, "DATA_LOSS"),
    errors.UnauthenticatedError: (401, "UNAUTHENTICATED"),
    errors.PermissionDeniedError: (403, "PERMISSION_DENIED"),
}


# Errors raised by the framework itself (unknown route, wrong method, unparsable body), in the
# same {"error": {code, message}} shape as the domain's.
CODE_FOR_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
}


def _json(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def create_app(control: Control, security: SecurityConfig | None = None) -> FastAPI:
    """The REST app; with authentication on (transport/tls.py) every route needs a bearer token."""
    guard = Depends(rest_guard(security or tls.current()))
    app = FastAPI(
        title="tidal coordinator",
        version=__version__,
        description="Jobs and cluster of a tidal deployment.",
        dependencies=[guard],
    )

    @app.exception_handler(errors.TidalError)
    async def _domain_error(request: Request, exc: errors.TidalError) -> JSONResponse:
        for cls in type(exc).__mro__:
            if cls in HTTP_STATUS_FOR_ERROR:
                status, code = HTTP_STATUS_FOR_ERROR[cls]
                response = _error(status, code, str(exc))
                if status == 401:
                    response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return _error(500, "UNKNOWN", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODE_FOR_HTTP_STATUS.get(exc.status_code, "INVALID_ARGUMENT" if exc.status_code < 500 else "UNKNOWN")
        detail = exc.detail if exc.status_code != 400 else f"body: {exc.detail}"
        response = _error(exc.status_code, code, str(detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(400, "INVALID_ARGUMENT", where)

    @app.post("/v1/jobs", status_code=201, summary="Submit a job (body: a JobSpec JSON object)")
    async def submit_job(spec: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        return _json(job_to_proto(await control.submit(json.dumps(spec))))

    @app.get("/v1/jobs", summary="List jobs")
    async def list_jobs() -> dict[str, Any]:
        return {"jobs": [_json(job_to_proto(j)) for j in control.jobs.all()]}

    @app.get("/v1/jobs/{job_id}", summary="Get one job")
    async def get_job(job_id: str) -> dict[str, Any]:
        return _json(job_to_proto(control.job(job_id)))

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        control.job(job_id)
        return _json(job_to_proto(await control.cancel(job_id)))

    @app.get("/v1/cluster", summary="Members and their states")
    async def cluster() -> dict[str, Any]:
        now = time.monotonic()
        return {"members": [_json(member_to_proto(m, now)) for m in control.membership.all()]}

    return app
