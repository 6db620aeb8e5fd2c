"""The API surface of real services: reflection, health, REST, gRPC errors and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import grpc
import httpx
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.integration.helpers import coordinator_stub
from tidal.launcher import LocalCluster
from tidal.v1 import coordinator_pb2 as coord_pb

pytestmark = pytest.mark.integration

TINY = {"name": "tiny", "model": {"name": "mlp", "args": {"hidden": [8]}}, "steps": 3, "num_workers": 2}


def _list_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return {s.name for s in replies[0].list_services_response.service}


def test_reflection_lists_every_tidal_service(cluster: LocalCluster) -> None:
    expected = {
        "coordinator": "tidal.v1.Coordinator",
        "shard-0": "tidal.v1.ParameterShard",
        "worker-0": "tidal.v1.Worker",
    }
    for name, service in expected.items():
        services = _list_services(cluster.address_of(name))
        assert service in services, (name, services)
        assert "grpc.health.v1.Health" in services


def _tidal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI against the plaintext test cluster: plaintext asked for explicitly, as it must be."""
    return subprocess.run(
        [sys.executable, "-m", "tidal", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "TIDAL_ALLOW_PLAINTEXT": "1"},
    )


def test_health_command_reports_serving_for_every_service(cluster: LocalCluster) -> None:
    for name in ("coordinator", "shard-0", "shard-1", "worker-0", "worker-1"):
        result = _tidal("health", cluster.address_of(name))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "SERVING"


def test_health_command_fails_on_a_dead_address() -> None:
    result = _tidal("health", "127.0.0.1:1", "--timeout", "1")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stdout


def test_rest_jobs_and_cluster(cluster: LocalCluster) -> None:
    with httpx.Client(base_url=cluster.rest_url, timeout=30) as http:
        created = http.post("/v1/jobs", json=TINY)
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
        assert json.loads(job["spec_json"])["steps"] == 3
        listed = http.get("/v1/jobs").json()["jobs"]
        assert job["job_id"] in {j["job_id"] for j in listed}
        fetched = http.get(f"/v1/jobs/{job['job_id']}")
        assert fetched.status_code == 200 and fetched.json()["job_id"] == job["job_id"]
        members = http.get("/v1/cluster").json()["members"]
        roles = sorted(m["role"] for m in members)
        assert roles.count("ROLE_SHARD") == 2 and roles.count("ROLE_WORKER") == 2
        cancelled = http.delete(f"/v1/jobs/{job['job_id']}")
        if cancelled.status_code == 200:
            assert cancelled.json()["state"] == "JOB_STATE_CANCELLED"
        else:  # it finished first: cancelling a finished job is a conflict, not a server error
            assert cancelled.status_code == 409
            assert cancelled.json()["error"]["code"] == "FAILED_PRECONDITION"
        assert "/v1/jobs" in http.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"optimizer": {"lr": -1}}, "spec.optimizer.lr"),
        ({"mode": "eventually"}, "spec.mode"),
        ({"model": {"name": "transformer-xxl"}}, "model.name"),
        ({"num_workers": 0}, "spec.num_workers"),
        ({"surprise": 1}, "spec.surprise"),
        ({"dataset": {"name": "nope"}}, "dataset.name"),
    ],
)
def test_rest_rejects_bad_specs_with_json_4xx(cluster: LocalCluster, body: dict, field: str) -> None:
    with httpx.Client(base_url=cluster.rest_url, timeout=30) as http:
        reply = http.post("/v1/jobs", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert field in error["message"]


def test_rest_errors_for_unknown_jobs_and_non_object_bodies(cluster: LocalCluster) -> None:
    with httpx.Client(base_url=cluster.rest_url, timeout=30) as http:
        missing = http.get("/v1/jobs/no-such-job")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
        assert http.delete("/v1/jobs/no-such-job").status_code == 404
        not_object = http.post("/v1/jobs", content=b"[1, 2]", headers={"content-type": "application/json"})
        assert not_object.status_code == 400 and "error" in not_object.json()
        garbage = http.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"})
        assert garbage.status_code == 400 and "error" in garbage.json()


def test_rest_limits_docs_and_schema_of_the_real_coordinator(cluster: LocalCluster) -> None:
    """The coordinator process serves the REST app with its defaults: a 1 MiB body limit,
    JSON errors from the server itself, Swagger UI from local assets, a bearer scheme."""
    with httpx.Client(base_url=cluster.rest_url, timeout=30) as http:
        body = b"{" + b" " * (1024 * 1024) + b"}"
        big = http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["error"]["code"] == "RESOURCE_EXHAUSTED", big.text
        headers = http.get("/v1/jobs", headers={"x-padding": "p" * 200_000})
        assert headers.status_code == 431 and headers.json()["error"]["code"] == "RESOURCE_EXHAUSTED", headers.text
        page = http.get("/docs").text
        assert "https://" not in page and http.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
        document = http.get("/openapi.json").json()
        assert {s["scheme"] for s in document["components"]["securitySchemes"].values()} == {"bearer"}
        assert "JobSpec" in document["components"]["schemas"]


def test_grpc_status_codes_name_the_field(cluster: LocalCluster) -> None:
    stub = coordinator_stub(cluster.coordinator_address)
    with pytest.raises(grpc.RpcError) as bad_spec:
        stub.SubmitJob(coord_pb.SubmitJobRequest(spec_json='{"batch_size": 0}'), timeout=10)
    assert bad_spec.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.batch_size" in bad_spec.value.details()
    with pytest.raises(grpc.RpcError) as not_json:
        stub.SubmitJob(coord_pb.SubmitJobRequest(spec_json="steps: 3"), timeout=10)
    assert not_json.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetJob(coord_pb.GetJobRequest(job_id="nope"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "job_id" in missing.value.details()
    with pytest.raises(grpc.RpcError) as bad_role:
        stub.Register(coord_pb.RegisterRequest(role=0), timeout=10)
    assert bad_role.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "role" in bad_role.value.details()


def test_cli_submit_wait_and_status(cluster: LocalCluster, tmp_path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("name: cli-job\nmodel: {name: mlp, args: {hidden: [8]}}\nsteps: 5\nnum_workers: 2\n")
    address = cluster.coordinator_address
    submitted = _tidal("submit", str(spec_file), "--coordinator", address, "--wait", timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[0]
    status = _tidal("status", job_id, "--coordinator", address, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[0]["state"] == "JOB_STATE_SUCCEEDED"
    table = _tidal("status", "--coordinator", address)
    assert job_id in table.stdout


def test_cli_errors_are_one_readable_line(cluster: LocalCluster, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer: {lr: -1}\n")
    result = _tidal("submit", str(bad), "--coordinator", cluster.coordinator_address)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "spec.optimizer.lr" in lines[0], result.stderr
    unreachable = _tidal("status", "--coordinator", "127.0.0.1:1")
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr
    missing_file = _tidal("submit", str(tmp_path / "nope.yaml"), "--coordinator", cluster.coordinator_address)
    assert missing_file.returncode == 1 and "cannot read job spec" in missing_file.stderr


def test_grpc_metrics_count_calls_by_status_code(cluster: LocalCluster) -> None:
    stub = coordinator_stub(cluster.coordinator_address)
    with pytest.raises(grpc.RpcError):
        stub.GetJob(coord_pb.GetJobRequest(job_id="missing-for-metrics"), timeout=10)
    stub.ListJobs(coord_pb.ListJobsRequest(), timeout=10)
    with urllib.request.urlopen(cluster.metrics_url("coordinator"), timeout=10) as reply:
        text = reply.read().decode()

    def handled(method: str, code: str) -> float:
        prefix = "grpc_server_handled_total{"
        for line in text.splitlines():
            if line.startswith(prefix) and f'grpc_method="{method}"' in line and f'grpc_code="{code}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert handled("GetJob", "NOT_FOUND") >= 1
    assert handled("ListJobs", "OK") >= 1
    assert 'grpc_type="BIDI_STREAM"' in text  # the member sessions
