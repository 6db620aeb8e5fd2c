"""What the REST API documents about itself: the OpenAPI document and the Swagger UI at /docs.

The document says what the API really does: every route takes a bearer token (the HTTP bearer
scheme, so Swagger UI's "Authorize" sends it), the submit body is a JobSpec (its JSON schema
generated from the pydantic model in core/spec.py), and errors are the statuses the API
answers with, all in the one error shape (transport/http_errors.py), never FastAPI's 422.

Swagger UI's script and style come from the fastapi-offline package and are served by the app
itself, so /docs works on a cluster without internet access.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from tidal.core.spec import JobSpec

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
SUBMIT_PATH = "/v1/jobs"
COMPONENTS = "#/components/schemas/"

# Documents the scheme; the request gate (transport/http_gate.py) checks the token, before the
# body is read, so this dependency never refuses anything itself.
BEARER = HTTPBearer(
    auto_error=False,
    description="A token from the coordinator's token table (TIDAL_TOKENS_FILE); admin to submit or cancel jobs.",
)


class ErrorDetail(BaseModel):
    code: str  # the gRPC status name: INVALID_ARGUMENT, NOT_FOUND, ...
    message: str  # names the offending field or what to fix


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    error: ErrorDetail


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The input is invalid (code INVALID_ARGUMENT); the message names the field",
    401: "No valid bearer token (UNAUTHENTICATED)",
    403: "The token's role may not do this (PERMISSION_DENIED)",
    404: "No such job (NOT_FOUND)",
    409: "The job is not in a state for this (FAILED_PRECONDITION)",
    413: "The body is over the server's limit (RESOURCE_EXHAUSTED)",
    429: "The coordinator holds as many jobs as it may (RESOURCE_EXHAUSTED)",
    500: "A bug in the coordinator (INTERNAL); its log has the details",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: the errors it answers with (401, 403 and 500 on every route)."""
    return {
        status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]}
        for status in sorted({401, 403, 500, *statuses})
    }


def install_openapi(app: FastAPI) -> None:
    """Replaces the app's generated document with one whose submit body is the JobSpec schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            spec = JobSpec.model_json_schema(ref_template=COMPONENTS + "{model}", mode="validation")
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(spec.pop("$defs", {}))
            schemas["JobSpec"] = spec
            body = document["paths"][SUBMIT_PATH]["post"]["requestBody"]
            body["content"] = {"application/json": {"schema": {"$ref": COMPONENTS + "JobSpec"}}}
            # FastAPI documents a 422 for every route with parameters; invalid input is a 400 here.
            for item in document["paths"].values():
                for operation in item.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the document


def install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs with its assets served from the installed package (public, like the schema)."""
    assets = resources.files("fastapi_offline") / "static"
    app.mount(ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # No online validator badge (it loads from the internet); keep the token across reloads.
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )

    # A plain route, not an API route: public like /openapi.json, and not in the document.
    app.add_route(DOCS_URL, docs, include_in_schema=False)
