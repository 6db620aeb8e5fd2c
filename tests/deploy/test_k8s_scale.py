"""The coordinator's Kubernetes scale-down client against a local HTTPS server that records
what it receives (no real API server here: the request shape follows the Kubernetes API
reference for PATCH .../{statefulsets,deployments}/NAME/scale with a merge patch)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.fake_k8s_api import FakeApi, fake_k8s_api, self_signed
from tidal.config import ENV
from tidal.core.errors import InvalidArgumentError, UnavailableError
from tidal.k8s_scale import ApiServer, ScaleTarget, parse_targets, scale_down


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ApiServer, FakeApi]]:
    with fake_k8s_api(tmp_path) as fake:
        yield ApiServer.in_cluster(fake.env), fake


def test_scales_each_target_to_zero_in_order_with_the_service_account(
    api: tuple[ApiServer, FakeApi],
) -> None:
    server, recorded = api
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


def test_rotated_token_is_read_again(api: tuple[ApiServer, FakeApi]) -> None:
    server, recorded = api
    sa = recorded.service_account
    target = ScaleTarget("statefulsets", "tidal-shard")
    server.patch_replicas(target, 0)
    (sa / "token").write_text("token-2")
    server.patch_replicas(target, 0)
    assert [r["headers"]["Authorization"] for r in recorded.requests] == ["Bearer token-1", "Bearer token-2"]


def test_a_refused_target_is_reported_and_the_others_still_scaled(api: tuple[ApiServer, FakeApi]) -> None:
    server, recorded = api
    recorded.answers["/apis/apps/v1/namespaces/tidal/statefulsets/tidal-shard/scale"] = 403
    errors = scale_down(server, parse_targets("statefulset/tidal-shard,deployment/tidal-coordinator"))
    assert len(errors) == 1 and "statefulsets/tidal-shard" in errors[0] and "HTTP 403" in errors[0]
    assert len(recorded.requests) == 2


def test_server_certificate_is_checked_against_the_service_account_ca(
    api: tuple[ApiServer, FakeApi], tmp_path: Path
) -> None:
    server, recorded = api
    sa = recorded.service_account
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
    sa = {ENV["k8s_service_account_dir"]: str(tmp_path)}
    with pytest.raises(UnavailableError, match="KUBERNETES_SERVICE_HOST"):
        ApiServer.in_cluster(sa)
    with pytest.raises(UnavailableError, match="no service account"):
        ApiServer.in_cluster({"KUBERNETES_SERVICE_HOST": "127.0.0.1", **sa})
    (tmp_path / "namespace").write_text("ns")
    api = ApiServer.in_cluster({"KUBERNETES_SERVICE_HOST": "::1", "KUBERNETES_SERVICE_PORT": "6443", **sa})
    assert api.base_url == "https://[::1]:6443" and api.namespace == "ns"
