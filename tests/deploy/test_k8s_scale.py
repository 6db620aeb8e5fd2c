"""The coordinator's Kubernetes scale-down client against a local HTTPS server that records
what it receives (no real API server here: the request shape follows the Kubernetes API
reference for PATCH .../{statefulsets,deployments}/NAME/scale with a merge patch)."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.manifests import require_tool
from tidal.core.errors import InvalidArgumentError, UnavailableError
from tidal.k8s_scale import ApiServer, ScaleTarget, parse_targets, scale_down


@dataclass
class Recorded:
    requests: list[dict] = field(default_factory=list)
    # path -> HTTP status to answer with (default 200).
    answers: dict[str, int] = field(default_factory=dict)


def self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    openssl = require_tool("openssl")
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kubernetes",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ApiServer, Recorded, Path]]:
    cert, key = self_signed(tmp_path, "server")
    recorded = Recorded()

    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            recorded.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
            status = recorded.answers.get(self.path, 200)
            reply = json.dumps({"kind": "Scale", "spec": {"replicas": 0}} if status == 200 else {"kind": "Status"})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "namespace").write_text("tidal\n")
    (sa / "token").write_text("token-1\n")
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.server_address[1])}
    try:
        yield ApiServer.in_cluster(env, sa), recorded, sa
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_scales_each_target_to_zero_in_order_with_the_service_account(
    api: tuple[ApiServer, Recorded, Path],
) -> None:
    server, recorded, _ = api
    targets = parse_targets("statefulset/tidal-shard,deployment/tidal-worker,deployment/tidal-coordinator")
    assert scale_down(server, targets) == []
    assert [r["path"] for r in recorded.requests] == [
        "/apis/apps/v1/namespaces/tidal/statefulsets/tidal-shard/scale",
        "/apis/apps/v1/namespaces/tidal/deployments/tidal-worker/scale",
        "/apis/apps/v1/namespaces/tidal/deployments/tidal-coordinator/scale",
    ]
    for request in recorded.requests:
        assert request["body"] == {"spec": {"replicas": 0}}
        assert request["headers"]["Content-Type"] == "application/merge-patch+json"
        assert request["headers"]["Authorization"] == "Bearer token-1"


def test_rotated_token_is_read_again(api: tuple[ApiServer, Recorded, Path]) -> None:
    server, recorded, sa = api
    target = ScaleTarget("statefulsets", "tidal-shard")
    server.patch_replicas(target, 0)
    (sa / "token").write_text("token-2")
    server.patch_replicas(target, 0)
    assert [r["headers"]["Authorization"] for r in recorded.requests] == ["Bearer token-1", "Bearer token-2"]


def test_a_refused_target_is_reported_and_the_others_still_scaled(api: tuple[ApiServer, Recorded, Path]) -> None:
    server, recorded, _ = api
    recorded.answers["/apis/apps/v1/namespaces/tidal/statefulsets/tidal-shard/scale"] = 403
    errors = scale_down(server, parse_targets("statefulset/tidal-shard,deployment/tidal-coordinator"))
    assert len(errors) == 1 and "statefulsets/tidal-shard" in errors[0] and "HTTP 403" in errors[0]
    assert len(recorded.requests) == 2


def test_server_certificate_is_checked_against_the_service_account_ca(
    api: tuple[ApiServer, Recorded, Path], tmp_path: Path
) -> None:
    server, recorded, sa = api
    other_ca, _ = self_signed(tmp_path, "other")
    (sa / "ca.crt").write_bytes(other_ca.read_bytes())
    with pytest.raises(UnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        server.patch_replicas(ScaleTarget("statefulsets", "tidal-shard"), 0)
    assert recorded.requests == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("statefulset/tidal-shard", [ScaleTarget("statefulsets", "tidal-shard")]),
        (" deployments/a , StatefulSet/b ,", [ScaleTarget("deployments", "a"), ScaleTarget("statefulsets", "b")]),
        ("", []),
    ],
)
def test_parse_targets(text: str, expected: list[ScaleTarget]) -> None:
    assert parse_targets(text) == expected


@pytest.mark.parametrize("text", ["tidal-shard", "job/tidal-worker", "deployment/", "deployment/a/b"])
def test_parse_targets_refuses_what_cannot_be_scaled(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="TIDAL_K8S_SCALE_DOWN"):
        parse_targets(text)


def test_in_cluster_needs_the_pod_environment(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="KUBERNETES_SERVICE_HOST"):
        ApiServer.in_cluster({}, tmp_path)
    with pytest.raises(UnavailableError, match="no service account"):
        ApiServer.in_cluster({"KUBERNETES_SERVICE_HOST": "127.0.0.1"}, tmp_path)
    (tmp_path / "namespace").write_text("ns")
    api = ApiServer.in_cluster({"KUBERNETES_SERVICE_HOST": "::1", "KUBERNETES_SERVICE_PORT": "6443"}, tmp_path)
    assert api.base_url == "https://[::1]:6443" and api.namespace == "ns"
