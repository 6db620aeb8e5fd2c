"""Who may call what: a pure authorization policy (no gRPC, no sockets).

A caller is a `Principal`: a role and an identity, authenticated by a bearer token or by
the role and name in its client certificate (see docs/security.md). `authorize` maps
(principal, method) to a `Decision`; the gRPC interceptor and the REST dependency carry it
out. Member ids are bound to the identity that registered them (`bind_member_id`), so a
worker cannot speak for another worker id: `check_member` compares them.

Roles:
- `admin` submits and cancels jobs (CLI, Python client, REST users);
- `worker` and `shard` register and hold a session; workers exchange with shards;
- `coordinator` is the coordinator's own certificate (it calls no tidal API today);
- every authenticated role may read (jobs, cluster, shard and worker info).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class AuthRole(StrEnum):
    ADMIN = "admin"
    COORDINATOR = "coordinator"
    SHARD = "shard"
    WORKER = "worker"


ROLE_NAMES: tuple[str, ...] = tuple(r.value for r in AuthRole)
_IDENTITY = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Separates a member id from the identity bound to it: "worker-3-a1b2c3@worker-0".
MEMBER_IDENTITY_SEPARATOR = "@"


def valid_identity(identity: str) -> bool:
    return bool(_IDENTITY.match(identity))


@dataclass(frozen=True)
class Principal:
    role: AuthRole
    identity: str
    # How it was authenticated: "token" or "certificate".
    via: str


class Outcome(StrEnum):
    ALLOW = "allow"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


ALLOW = Decision(Outcome.ALLOW)
_ANY = frozenset(AuthRole)
_MEMBERS = frozenset({AuthRole.WORKER, AuthRole.SHARD})

# Methods anyone may call, even without credentials: readiness probes only.
PUBLIC_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})

# gRPC full method name -> roles allowed. REST routes map onto the same names (REST_METHODS).
METHOD_ROLES: dict[str, frozenset[AuthRole]] = {
    "/tidal.v1.Coordinator/Register": _MEMBERS,
    "/tidal.v1.Coordinator/Session": _MEMBERS,
    "/tidal.v1.Coordinator/SubmitJob": frozenset({AuthRole.ADMIN}),
    "/tidal.v1.Coordinator/CancelJob": frozenset({AuthRole.ADMIN}),
    "/tidal.v1.Coordinator/GetJob": _ANY,
    "/tidal.v1.Coordinator/ListJobs": _ANY,
    "/tidal.v1.Coordinator/WatchJob": _ANY,
    "/tidal.v1.Coordinator/GetCluster": _ANY,
    "/tidal.v1.ParameterShard/Exchange": frozenset({AuthRole.WORKER}),
    "/tidal.v1.ParameterShard/ReadParameters": frozenset({AuthRole.ADMIN, AuthRole.WORKER}),
    "/tidal.v1.ParameterShard/GetShardInfo": _ANY,
    "/tidal.v1.ParameterShard/PullRows": frozenset({AuthRole.WORKER}),
    "/tidal.v1.ParameterShard/PushRows": frozenset({AuthRole.WORKER}),
    "/tidal.v1.ParameterShard/ReadRows": frozenset({AuthRole.ADMIN, AuthRole.WORKER}),
    "/tidal.v1.Worker/GetWorkerInfo": _ANY,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _ANY,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _ANY,
}

# REST (method, route template) -> the gRPC method whose rule applies.
REST_METHODS: dict[tuple[str, str], str] = {
    ("POST", "/v1/jobs"): "/tidal.v1.Coordinator/SubmitJob",
    ("GET", "/v1/jobs"): "/tidal.v1.Coordinator/ListJobs",
    ("GET", "/v1/jobs/{job_id}"): "/tidal.v1.Coordinator/GetJob",
    ("DELETE", "/v1/jobs/{job_id}"): "/tidal.v1.Coordinator/CancelJob",
    ("GET", "/v1/cluster"): "/tidal.v1.Coordinator/GetCluster",
}

# Member roles on the wire (tidal.v1.Role names) -> the principal role that may register them.
REGISTER_ROLE = {"ROLE_WORKER": AuthRole.WORKER, "ROLE_SHARD": AuthRole.SHARD}


def authorize(principal: Principal | None, method: str) -> Decision:
    """May `principal` (None: no valid credentials) call `method`? Unknown methods are denied."""
    if method in PUBLIC_METHODS:
        return ALLOW
    if principal is None:
        return Decision(Outcome.UNAUTHENTICATED, "credentials: a valid bearer token or client certificate is required")
    roles = METHOD_ROLES.get(method)
    if roles is None:
        return Decision(Outcome.PERMISSION_DENIED, f"method: {method} is not in the authorization policy")
    if principal.role not in roles:
        allowed = ", ".join(sorted(r.value for r in roles))
        return Decision(
            Outcome.PERMISSION_DENIED,
            f"role: {principal.identity} is {principal.role.value}; {method} needs {allowed}",
        )
    return ALLOW


def bind_member_id(member_id: str, identity: str) -> str:
    """The member id the coordinator hands out to `identity` (unchanged without one)."""
    return f"{member_id}{MEMBER_IDENTITY_SEPARATOR}{identity}" if identity else member_id


def identity_of_member(member_id: str) -> str:
    """The identity a member id is bound to ("" for ids made without authentication)."""
    _, separator, identity = member_id.rpartition(MEMBER_IDENTITY_SEPARATOR)
    return identity if separator else ""


def check_member(principal: Principal, member_id: str, field: str) -> Decision:
    """A member may only speak for member ids bound to its own identity."""
    bound = identity_of_member(member_id)
    if bound != principal.identity:
        return Decision(
            Outcome.PERMISSION_DENIED,
            f"{field}: {member_id!r} does not belong to {principal.identity} ({principal.role.value})",
        )
    return ALLOW


def check_register(principal: Principal, wire_role: str, previous_id: str) -> Decision:
    """A worker registers only as a worker, a shard only as a shard, and resumes only its own id."""
    wanted = REGISTER_ROLE.get(wire_role)
    if wanted is not None and wanted is not principal.role:
        return Decision(
            Outcome.PERMISSION_DENIED,
            f"role: {principal.identity} is {principal.role.value} and may not register as {wanted.value}",
        )
    if previous_id:
        return check_member(principal, previous_id, "member_id")
    return ALLOW
