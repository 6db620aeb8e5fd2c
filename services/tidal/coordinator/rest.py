"""The REST API beside gRPC (FastAPI): the same `Control`, JSON in and out.

Bodies are the proto messages rendered with protobuf's JSON mapping (field names as in
the .proto), so REST and gRPC clients see the same shapes. Every error, the domain's, the
framework's and a bug's, is one JSON shape {"error": {"code": ..., "message": ...}}
(transport/http_errors.py). Credentials and the body size are checked by the request gate
(transport/http_gate.py) before the body is read; rest_openapi.py holds what /docs and
/openapi.json show.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import Body, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from starlette.exceptions import HTTPException as StarletteHTTPException

from tidal import __version__
from tidal.coordinator.control import Control
from tidal.coordinator.convert import job_to_proto, member_to_proto
from tidal.coordinator.rest_openapi import BEARER, error_responses, install_docs, install_openapi
from tidal.core import errors
from tidal.transport.http_errors import code_for_status, error_content, headers_for, http_error_for
from tidal.transport.http_gate import MAX_BODY_BYTES, RequestGate, checked_body_limit
from tidal.transport.tls import SecurityConfig

log = logging.getLogger(__name__)


def _json(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_content(code, message), headers=headers)


def create_app(control: Control, security: SecurityConfig, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The REST app; with authentication on (transport/tls.py) every route needs a bearer token.
    A body over `max_body_bytes` is refused with 413 before more of it is read."""
    checked_body_limit(max_body_bytes)
    app = FastAPI(
        title="tidal coordinator",
        version=__version__,
        description="Jobs and cluster of a tidal deployment.",
        dependencies=[Security(BEARER)],
        docs_url=None,  # install_docs serves Swagger UI without a CDN
        redoc_url=None,
    )
    app.add_middleware(RequestGate, routes=app.router.routes, security=security, max_body_bytes=max_body_bytes)

    @app.exception_handler(errors.TidalError)
    async def _domain_error(request: Request, exc: errors.TidalError) -> JSONResponse:
        status, code = http_error_for(exc)
        if status >= 500:
            log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(status, code, str(exc), headers_for(status))

    @app.exception_handler(StarletteHTTPException)
    async def _framework_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 400 else f"body: {exc.detail}"
        return _error(exc.status_code, code_for_status(exc.status_code), str(detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return _error(400, "INVALID_ARGUMENT", where)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this answer, so the server still logs the traceback.
        return _error(500, "INTERNAL", f"internal error ({type(exc).__name__}); the coordinator's log has the details")

    @app.post("/v1/jobs", status_code=201, summary="Submit a job", responses=error_responses(400, 413, 429))
    async def submit_job(spec: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        # Parsed as a plain object: the domain validates it (core/spec.py), as it does for gRPC.
        return _json(job_to_proto(await control.submit(json.dumps(spec))))

    @app.get("/v1/jobs", summary="List jobs", responses=error_responses())
    async def list_jobs() -> dict[str, Any]:
        return {"jobs": [_json(job_to_proto(j)) for j in control.jobs.all()]}

    @app.get("/v1/jobs/{job_id}", summary="Get one job", responses=error_responses(404))
    async def get_job(job_id: str) -> dict[str, Any]:
        return _json(job_to_proto(control.job(job_id)))

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job", responses=error_responses(404, 409))
    async def cancel_job(job_id: str) -> dict[str, Any]:
        control.job(job_id)
        return _json(job_to_proto(await control.cancel(job_id)))

    @app.get("/v1/cluster", summary="Members and their states", responses=error_responses())
    async def cluster() -> dict[str, Any]:
        now = time.monotonic()
        return {"members": [_json(member_to_proto(m, now)) for m in control.membership.all()]}

    install_docs(app)
    install_openapi(app)
    return app
