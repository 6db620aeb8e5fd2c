"""The authorization policy, table-tested without sockets (core/authz.py)."""

from __future__ import annotations

import pytest

from tidal.core import authz
from tidal.core.authz import AuthRole, Outcome, Principal

ADMIN = Principal(AuthRole.ADMIN, "alice", "token")
WORKER = Principal(AuthRole.WORKER, "worker-0", "certificate")
SHARD = Principal(AuthRole.SHARD, "shard-0", "certificate")
COORD = "/tidal.v1.Coordinator/"
SHARD_SVC = "/tidal.v1.ParameterShard/"


@pytest.mark.parametrize(
    ("principal", "method", "outcome"),
    [
        (None, "/grpc.health.v1.Health/Check", Outcome.ALLOW),
        (None, f"{COORD}GetJob", Outcome.UNAUTHENTICATED),
        (None, f"{COORD}SubmitJob", Outcome.UNAUTHENTICATED),
        (ADMIN, f"{COORD}SubmitJob", Outcome.ALLOW),
        (ADMIN, f"{COORD}CancelJob", Outcome.ALLOW),
        (WORKER, f"{COORD}SubmitJob", Outcome.PERMISSION_DENIED),
        (WORKER, f"{COORD}CancelJob", Outcome.PERMISSION_DENIED),
        (SHARD, f"{COORD}SubmitJob", Outcome.PERMISSION_DENIED),
        (WORKER, f"{COORD}GetJob", Outcome.ALLOW),
        (WORKER, f"{COORD}Register", Outcome.ALLOW),
        (ADMIN, f"{COORD}Register", Outcome.PERMISSION_DENIED),
        (ADMIN, f"{COORD}Session", Outcome.PERMISSION_DENIED),
        (WORKER, f"{SHARD_SVC}Exchange", Outcome.ALLOW),
        (SHARD, f"{SHARD_SVC}Exchange", Outcome.PERMISSION_DENIED),
        (ADMIN, f"{SHARD_SVC}Exchange", Outcome.PERMISSION_DENIED),
        (ADMIN, f"{SHARD_SVC}ReadParameters", Outcome.ALLOW),
        (SHARD, f"{SHARD_SVC}ReadParameters", Outcome.PERMISSION_DENIED),
        (WORKER, "/tidal.v1.Worker/GetWorkerInfo", Outcome.ALLOW),
        (ADMIN, "/some.Unknown/Method", Outcome.PERMISSION_DENIED),
    ],
)
def test_authorize(principal: Principal | None, method: str, outcome: Outcome) -> None:
    decision = authz.authorize(principal, method)
    assert decision.outcome is outcome
    assert decision.allowed == (outcome is Outcome.ALLOW)
    if not decision.allowed:
        assert decision.reason


def test_every_rest_route_maps_to_a_policed_method() -> None:
    assert set(authz.REST_METHODS.values()) <= set(authz.METHOD_ROLES)


def test_member_ids_are_bound_to_their_identity() -> None:
    bound = authz.bind_member_id("worker-3-abcdef", "worker-0")
    assert bound == "worker-3-abcdef@worker-0"
    assert authz.identity_of_member(bound) == "worker-0"
    assert authz.bind_member_id("worker-3-abcdef", "") == "worker-3-abcdef"
    assert authz.identity_of_member("worker-3-abcdef") == ""
    assert authz.check_member(WORKER, bound, "open.worker_id").allowed
    other = authz.check_member(Principal(AuthRole.WORKER, "worker-1", "token"), bound, "open.worker_id")
    assert other.outcome is Outcome.PERMISSION_DENIED and other.reason.startswith("open.worker_id:")
    # An id made without authentication belongs to nobody once authentication is on.
    assert not authz.check_member(WORKER, "worker-3-abcdef", "open.worker_id").allowed


def test_register_role_and_resume() -> None:
    assert authz.check_register(WORKER, "ROLE_WORKER", "").allowed
    assert authz.check_register(SHARD, "ROLE_SHARD", "").allowed
    assert not authz.check_register(WORKER, "ROLE_SHARD", "").allowed
    assert not authz.check_register(SHARD, "ROLE_WORKER", "").allowed
    assert authz.check_register(WORKER, "ROLE_WORKER", "worker-1-aaaaaa@worker-0").allowed
    assert not authz.check_register(WORKER, "ROLE_WORKER", "worker-1-aaaaaa@worker-9").allowed


@pytest.mark.parametrize("identity", ["worker-0", "a", "A.b_c-9", "x" * 64])
def test_valid_identities(identity: str) -> None:
    assert authz.valid_identity(identity)


@pytest.mark.parametrize("identity", ["", "x" * 65, "a b", "a@b", "a/b", "é"])
def test_invalid_identities(identity: str) -> None:
    assert not authz.valid_identity(identity)
