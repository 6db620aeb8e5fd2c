"""Fuzzing the coordinator's REST API: schemathesis from its OpenAPI schema, then a
hypothesis fuzzer for what a schema does not describe (any method, path, header and body).

Every answer must be a JSON response below 500 (bad input is a 4xx naming the field) and,
for the documented operations, one the document promises: a documented status, content type
and body schema (errors in the one error shape). The app runs in-process on its own
`Control`, as the coordinator serves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from tests.security.conftest import TALLY, examples
from tidal.coordinator.control import Control
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.rest import create_app
from tidal.transport.tls import SecurityConfig

SETTINGS = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": list(HealthCheck)}


def _app():  # FastAPI
    return create_app(Control(CoordinatorCounters(CollectorRegistry()), 1.0, 30.0), SecurityConfig())


# schemathesis' own pytest plugin does not run under pytest 9 ('Function' has no '_nodeid'), so
# its per-operation hypothesis strategies drive plain hypothesis tests here.
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", _app())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
# Negative cases exist only where the schema constrains something (a body); for the others
# (no parameters, or a free-form string id) hypothesis would report them unsatisfiable.
CASES = [
    (operation, mode)
    for operation in OPERATIONS
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    if mode is schemathesis.GenerationMode.POSITIVE or list(operation.body)
]


# What the document promises (rest_openapi.py), checked against what the app answered.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _is_error_body(response: Any) -> bool:
    body = response.json()
    return isinstance(body, dict) and bool(body.get("error", {}).get("code")) and bool(body["error"].get("message"))


@pytest.mark.parametrize(("operation", "mode"), CASES, ids=[f"{o.method.upper()} {o.path}-{m.value}" for o, m in CASES])
def test_openapi_operations(operation: Any, mode: schemathesis.GenerationMode) -> None:
    @settings(max_examples=examples(150), **SETTINGS)
    @given(operation.as_strategy(mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call()
        TALLY[("rest:schemathesis", str(response.status_code))] += 1
        case.validate_response(response, checks=CHECKS)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert _is_error_body(response), response.text

    run()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(_app(), raise_server_exceptions=True) as c:
        yield c


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
SPEC_KEYS = ["name", "mode", "model", "dataset", "optimizer", "batch_size", "steps", "num_workers", "num_shards",
             "seed", "eval_every", "step_timeout_s", "stragglers", "consistency", "compression"]  # fmt: skip
SPECS = st.dictionaries(st.sampled_from(SPEC_KEYS), JSON_VALUES, max_size=6)
BODIES = st.one_of(
    SPECS.map(lambda d: json.dumps(d).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.just(b"[" * 5000),  # deeply nested JSON
    st.just(b'{"name": "\\ud800"}'),  # a lone surrogate
)
PATHS = st.one_of(
    st.sampled_from(["/v1/jobs", "/v1/cluster", "/v1/jobs/job-1", "/v1/jobs/%00", "/v1/jobs/..%2F..", "/v1//jobs"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(lambda p: "/v1/jobs/" + p),
)


@settings(max_examples=examples(2000), **SETTINGS)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
    path=PATHS,
    body=BODIES,
    content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
)
def test_anything_goes(client: TestClient, method: str, path: str, body: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.request(
        method, path, content=body if method in ("POST", "PUT", "PATCH") else None, headers=headers
    )
    TALLY[("rest:hypothesis", str(response.status_code))] += 1
    assert response.status_code < 500, (method, path, body[:100], response.text)
    assert response.headers["content-type"].startswith("application/json"), response.text
    if response.status_code >= 400:
        assert _is_error_body(response), (method, path, response.text)
