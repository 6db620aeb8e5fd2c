"""The coordinator's REST app in-process: the request gate's order (credentials, then the body),
the body limit, one JSON error shape for every error, Swagger UI without a CDN, and an OpenAPI
document that says what the API really does. The same checks against a real server, where the
bytes on the socket matter, are in tests/security/test_rest_limits.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from tidal.coordinator.control import Control
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.rest import create_app
from tidal.core import authz
from tidal.core.errors import InternalError, InvalidArgumentError
from tidal.core.spec import JobSpec
from tidal.core.tokens import TokenTable
from tidal.transport.tls import SecurityConfig

ADMIN = "a" * 40
WORKER = "w" * 40
TOKENS = TokenTable.parse(
    json.dumps(
        {
            "tokens": [
                {"token": ADMIN, "role": "admin", "identity": "alice"},
                {"token": WORKER, "role": "worker", "identity": "worker-0"},
            ]
        }
    )
)
SECURE = SecurityConfig(tokens=TOKENS)
JSON = {"content-type": "application/json"}
TINY = {"name": "tiny", "model": {"name": "mlp", "args": {"hidden": [8]}}, "steps": 3, "num_workers": 2}


def _control() -> Control:
    return Control(CoordinatorCounters(CollectorRegistry()), 1.0, 30.0)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error["message"]


@pytest.fixture
def secure() -> Iterator[TestClient]:
    with TestClient(create_app(_control(), SECURE)) as client:
        yield client


@pytest.fixture
def open_app() -> Iterator[TestClient]:
    """Authentication off (as in a plaintext experiment); bugs answered, not raised into the test."""
    app = create_app(_control(), SecurityConfig())

    async def internal() -> None:
        raise InternalError("shard-0 answered INTERNAL: boom")

    async def bug() -> None:
        raise ZeroDivisionError("division by zero")

    # Routes that fail the way a bug would, to reach the app's real error handlers.
    app.add_api_route("/v1/test/internal", internal)
    app.add_api_route("/v1/test/bug", bug)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


# --- credentials come before the body -------------------------------------------------------


@pytest.mark.parametrize("body", [b"{nope", b"[" * 5000, b"\xff\xfe", b""])
def test_no_token_is_401_whatever_the_body(secure: TestClient, body: bytes) -> None:
    message = _assert_error(secure.post("/v1/jobs", content=body, headers=JSON), 401, "UNAUTHENTICATED")
    assert "Bearer" in message


def test_an_oversized_body_without_a_token_is_401_not_413(secure: TestClient) -> None:
    reply = secure.post("/v1/jobs", content=b"x" * (3 * 1024 * 1024), headers=JSON)
    _assert_error(reply, 401, "UNAUTHENTICATED")
    assert reply.headers["www-authenticate"] == "Bearer"


def test_a_worker_token_is_refused_before_its_malformed_body_is_parsed(secure: TestClient) -> None:
    reply = secure.post("/v1/jobs", content=b"{nope", headers=JSON | _bearer(WORKER))
    assert "SubmitJob" in _assert_error(reply, 403, "PERMISSION_DENIED")


def test_the_401_message_speaks_of_tokens_not_certificates(secure: TestClient) -> None:
    for method, path in authz.REST_METHODS:
        reply = secure.request(method, path.replace("{job_id}", "job-1"))
        message = _assert_error(reply, 401, "UNAUTHENTICATED")
        assert "certificate" not in message and "Authorization: Bearer" in message, message


def test_a_bad_token_and_a_bad_scheme_are_401(secure: TestClient) -> None:
    _assert_error(secure.get("/v1/jobs", headers=_bearer("z" * 40)), 401, "UNAUTHENTICATED")
    _assert_error(secure.get("/v1/jobs", headers={"authorization": f"Basic {ADMIN}"}), 401, "UNAUTHENTICATED")


def test_rest_rules_are_unchanged(secure: TestClient) -> None:
    admin, worker = _bearer(ADMIN), _bearer(WORKER)
    created = secure.post("/v1/jobs", json=TINY, headers=admin)
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    for token in (admin, worker):
        assert secure.get("/v1/jobs", headers=token).status_code == 200
        assert secure.get(f"/v1/jobs/{job_id}", headers=token).status_code == 200
        assert secure.get("/v1/cluster", headers=token).status_code == 200
    _assert_error(secure.post("/v1/jobs", json=TINY, headers=worker), 403, "PERMISSION_DENIED")
    _assert_error(secure.delete(f"/v1/jobs/{job_id}", headers=worker), 403, "PERMISSION_DENIED")
    assert secure.delete(f"/v1/jobs/{job_id}", headers=admin).status_code == 200
    # Public as before: the schema and the docs; unknown routes are 404 without credentials.
    assert secure.get("/openapi.json").status_code == 200
    assert secure.get("/docs").status_code == 200
    _assert_error(secure.get("/v1/nowhere"), 404, "NOT_FOUND")


# --- the body limit -------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_is_413(secure: TestClient) -> None:
    reply = secure.post("/v1/jobs", content=b"{" + b" " * (1024 * 1024) + b"}", headers=JSON | _bearer(ADMIN))
    assert "1048576" in _assert_error(reply, 413, "RESOURCE_EXHAUSTED")


def test_a_streamed_body_over_the_limit_is_413() -> None:
    def chunks() -> Iterator[bytes]:  # no content-length: sent chunked
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}'

    with TestClient(create_app(_control(), SECURE, max_body_bytes=16 * 1024)) as client:
        reply = client.post("/v1/jobs", content=chunks(), headers=JSON | _bearer(ADMIN))
        assert "content-length" not in reply.request.headers
        assert "16384" in _assert_error(reply, 413, "RESOURCE_EXHAUSTED")
        # Under the limit the same route still works.
        assert client.post("/v1/jobs", json=TINY, headers=_bearer(ADMIN)).status_code == 201


def test_the_limit_is_a_parameter() -> None:
    with TestClient(create_app(_control(), SecurityConfig(), max_body_bytes=100)) as client:
        _assert_error(
            client.post("/v1/jobs", content=b"{" + b" " * 100 + b"}", headers=JSON), 413, "RESOURCE_EXHAUSTED"
        )
        assert client.post("/v1/jobs", json=TINY).status_code == 201
    with pytest.raises(InvalidArgumentError, match="max_body_bytes"):
        create_app(_control(), SecurityConfig(), max_body_bytes=0)


# --- one error shape ------------------------------------------------------------------------


def test_framework_errors_have_the_shape(open_app: TestClient) -> None:
    _assert_error(open_app.get("/v1/nowhere"), 404, "NOT_FOUND")
    _assert_error(open_app.put("/v1/jobs"), 405, "UNIMPLEMENTED")
    _assert_error(open_app.get("/docs/assets/no-such-file.js"), 404, "NOT_FOUND")
    _assert_error(open_app.post("/v1/jobs", content=b"{nope", headers=JSON), 400, "INVALID_ARGUMENT")
    _assert_error(open_app.post("/v1/jobs", content=b"[1, 2]", headers=JSON), 400, "INVALID_ARGUMENT")
    _assert_error(open_app.post("/v1/jobs", content=b"steps: 3", headers={"content-type": "text/plain"}), 400,
                  "INVALID_ARGUMENT")  # fmt: skip


def test_an_internal_error_is_500_internal(open_app: TestClient) -> None:
    message = _assert_error(open_app.get("/v1/test/internal"), 500, "INTERNAL")
    assert "shard-0 answered INTERNAL" in message


def test_an_unexpected_exception_is_500_internal_json(open_app: TestClient) -> None:
    message = _assert_error(open_app.get("/v1/test/bug"), 500, "INTERNAL")
    assert "ZeroDivisionError" in message


# --- Swagger UI without a CDN ---------------------------------------------------------------


def test_docs_load_only_local_assets(open_app: TestClient) -> None:
    page = open_app.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""", page.text)
    urls = [a or b for a, b in urls]
    assert len(urls) >= 4, urls  # stylesheet, icon, script, schema
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert open_app.get(url).status_code == 200, url
    assert "http://" not in page.text and "https://" not in page.text


# --- the OpenAPI document -------------------------------------------------------------------


@pytest.fixture
def document(open_app: TestClient) -> dict:
    return open_app.get("/openapi.json").json()


def _operations(document: dict) -> Iterator[tuple[str, str, dict]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not path.startswith("/v1/test/"):
                yield method.upper(), path, operation


def test_every_route_takes_the_bearer_scheme(document: dict) -> None:
    schemes = document["components"]["securitySchemes"]
    [(name, scheme)] = schemes.items()
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    operations = list(_operations(document))
    assert {(m, p) for m, p, _ in operations} == set(authz.REST_METHODS)
    for method, path, operation in operations:
        assert operation["security"] == [{name: []}], (method, path)


def test_the_submit_body_is_the_job_spec_schema(document: dict) -> None:
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    schemas = document["components"]["schemas"]
    expected = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in expected.pop("$defs").items():
        assert schemas[name] == schema, name
    assert schemas["JobSpec"] == expected
    assert set(schemas["JobSpec"]["properties"]) == set(JobSpec.model_fields)
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document))
    assert set(refs) <= set(schemas), set(refs) - set(schemas)


DOCUMENTED = {
    ("POST", "/v1/jobs"): {"201", "400", "401", "403", "413", "429", "500"},
    ("GET", "/v1/jobs"): {"200", "401", "403", "500"},
    ("GET", "/v1/jobs/{job_id}"): {"200", "401", "403", "404", "500"},
    ("DELETE", "/v1/jobs/{job_id}"): {"200", "401", "403", "404", "409", "500"},
    ("GET", "/v1/cluster"): {"200", "401", "403", "500"},
}


def test_responses_are_the_ones_the_api_sends(document: dict) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error = document["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        assert set(responses) == DOCUMENTED[(method, path)], (method, path)
        for status, response in responses.items():
            if not status.startswith("2"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
