"""Mutual TLS and tokens against real processes (coordinator, shard, worker, REST).

One cluster runs with the bundle `tidal certs` makes (every service on mutual TLS, a token
table); each credential below calls every service and REST and must be accepted or refused
with the right code. Refusals at the TLS layer (no client certificate, another CA, an
expired certificate, plaintext) never reach tidal's code: the handshake fails and gRPC
reports UNAVAILABLE, HTTPS a transport error. The cluster must stay healthy throughout.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tests.integration.helpers import run_async, wait_until
from tidal.compare.metrics import scrape
from tidal.core.errors import UnavailableError
from tidal.launcher import HOST, LocalCluster
from tidal.security.bundle import create_bundle, environment
from tidal.security.certs import create_dev_pki, issue, load_ca, write_pair
from tidal.transport.server import create_channel
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc
from tidal.v1 import worker_pb2 as worker_pb
from tidal.v1 import worker_pb2_grpc as worker_grpc

pytestmark = pytest.mark.integration

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
TLS_FAILED = "tls"  # REST: the handshake fails, no HTTP status

SPEC = {
    "name": "secure",
    "mode": "sync",
    "model": {"name": "mlp", "args": {"hidden": [8]}},
    "num_workers": 1,
    "num_shards": 1,
    "steps": 10,
}


@dataclass
class Secure:
    cluster: LocalCluster
    pki: Path
    other: Path

    def token(self, name: str) -> str:
        return (self.pki / f"{name}.token").read_text().strip()

    def config(self, cert: str | None = None, token: str = "", folder: Path | None = None) -> SecurityConfig:
        folder = folder or self.pki
        paths = (folder / f"{cert}.crt", folder / f"{cert}.key") if cert else (None, None)
        return SecurityConfig(ca_path=self.pki / "ca.crt", cert_path=paths[0], key_path=paths[1], token=token)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    workdir = tmp_path_factory.mktemp("secure")
    pki, other = workdir / "pki", workdir / "other-ca"
    create_bundle(pki, extra=[("worker", "worker-1")])
    create_dev_pki(other, [("admin", "admin")])  # a CA the cluster does not trust
    ca_key, ca_cert = load_ca(pki)
    key, cert = issue(ca_key, ca_cert, "admin", "expired-admin", valid_days=-1)
    write_pair(pki, "expired-admin", key, cert, force=False)
    with LocalCluster(workdir, num_shards=1, worker_slowdowns=(1.0,), env=environment(pki)) as cluster:
        yield Secure(cluster, pki, other)


async def _code(call: Any) -> grpc.StatusCode:
    try:
        result = call()
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return OK


async def _grpc_codes(s: Secure, config: SecurityConfig) -> dict[str, grpc.StatusCode]:
    c = s.cluster
    async with (
        create_channel(c.coordinator_address, config) as coord,
        create_channel(c.address_of("shard-0"), config) as shard,
        create_channel(c.address_of("worker-0"), config) as worker,
    ):
        co, sh, wo = (
            coord_grpc.CoordinatorStub(coord),
            shard_grpc.ParameterShardStub(shard),
            worker_grpc.WorkerStub(worker),
        )
        calls = {
            "coordinator.GetCluster": lambda: co.GetCluster(coord_pb.GetClusterRequest(), timeout=5),
            "coordinator.ListJobs": lambda: co.ListJobs(coord_pb.ListJobsRequest(), timeout=5),
            # Invalid on purpose: a caller allowed to submit gets INVALID_ARGUMENT, no job starts.
            "coordinator.SubmitJob": lambda: co.SubmitJob(coord_pb.SubmitJobRequest(spec_json="{"), timeout=5),
            "coordinator.CancelJob": lambda: co.CancelJob(coord_pb.CancelJobRequest(job_id="nope"), timeout=5),
            "shard.GetShardInfo": lambda: sh.GetShardInfo(shard_pb.GetShardInfoRequest(), timeout=5),
            "worker.GetWorkerInfo": lambda: wo.GetWorkerInfo(worker_pb.GetWorkerInfoRequest(), timeout=5),
        }
        return {name: await _code(call) for name, call in calls.items()}


def _rest_statuses(s: Secure, cert: tuple[Path, Path] | None, token: str) -> dict[str, int | str]:
    context = ssl.create_default_context(cafile=str(s.pki / "ca.crt"))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = f"https://{HOST}:{s.cluster.services['coordinator'].info['http_port']}"
    out: dict[str, int | str] = {}
    with httpx.Client(base_url=base, verify=context, headers=headers, timeout=5) as client:
        for name, (method, path, body) in {
            "GET /v1/jobs": ("GET", "/v1/jobs", None),
            "GET /v1/cluster": ("GET", "/v1/cluster", None),
            "POST /v1/jobs": ("POST", "/v1/jobs", {"steps": -1}),
            "DELETE /v1/jobs/nope": ("DELETE", "/v1/jobs/nope", None),
        }.items():
            try:
                response = client.request(method, path, json=body)
            except httpx.TransportError:
                out[name] = TLS_FAILED
                continue
            assert response.headers["content-type"].startswith("application/json"), response.text
            out[name] = response.status_code
    return out


def test_a_job_trains_with_mutual_tls_and_member_ids_are_bound(secure: Secure) -> None:
    async def run() -> tuple[coord_pb.JobStatus, list[coord_pb.Member]]:
        async with create_channel(secure.cluster.coordinator_address, secure.config("admin")) as channel:
            stub = coord_grpc.CoordinatorStub(channel)
            job = (await stub.SubmitJob(coord_pb.SubmitJobRequest(spec_json=json.dumps(SPEC)), timeout=10)).job
            last = job
            async for reply in stub.WatchJob(coord_pb.WatchJobRequest(job_id=job.job_id), timeout=90):
                last = reply.job
            members = (await stub.GetCluster(coord_pb.GetClusterRequest(), timeout=5)).members
            return last, list(members)

    final, members = run_async(run(), 120)
    assert final.state == common_pb.JOB_STATE_SUCCEEDED, final.message
    roles = {m.member_id.rpartition("@")[2] for m in members}
    assert roles == {"worker", "shard"}, [m.member_id for m in members]
    for name in ("coordinator", "shard-0", "worker-0"):
        assert "SECURITY IS OFF" not in secure.cluster.services[name].log_path.read_text()


# Expected answers: gRPC codes by call (a default plus exceptions), REST statuses by route.
ALLOWED_ADMIN = {
    "coordinator.SubmitJob": grpc.StatusCode.INVALID_ARGUMENT,
    "coordinator.CancelJob": grpc.StatusCode.NOT_FOUND,
}
REST_ADMIN = {"GET /v1/jobs": 200, "GET /v1/cluster": 200, "POST /v1/jobs": 400, "DELETE /v1/jobs/nope": 404}
REST_READER = {"GET /v1/jobs": 200, "GET /v1/cluster": 200, "POST /v1/jobs": 403, "DELETE /v1/jobs/nope": 403}
REST_401 = dict.fromkeys(REST_ADMIN, 401)
REST_TLS = dict.fromkeys(REST_ADMIN, TLS_FAILED)
GRPC_DENIED_ADMIN = {"coordinator.SubmitJob": DENIED, "coordinator.CancelJob": DENIED}


@dataclass(frozen=True)
class Case:
    cert: str | None  # certificate name in the bundle (None: no client certificate)
    token: str  # token holder name, "bad" for a made-up token, "" for none
    grpc_default: grpc.StatusCode
    grpc_special: dict[str, grpc.StatusCode]
    rest: dict[str, int | str]
    cert_folder: str = "pki"


CASES = {
    "valid admin certificate": Case("admin", "", OK, ALLOWED_ADMIN, REST_401),
    "admin token with admin certificate": Case("admin", "admin", OK, ALLOWED_ADMIN, REST_ADMIN),
    "no client certificate, no token": Case(None, "", UNAVAILABLE, {}, REST_401),
    "no client certificate, admin token": Case(None, "admin", UNAVAILABLE, {}, REST_ADMIN),
    "certificate from another CA": Case("admin", "admin", UNAVAILABLE, {}, REST_TLS, cert_folder="other"),
    "expired certificate": Case("expired-admin", "admin", UNAVAILABLE, {}, REST_TLS),
    "wrong token": Case("admin", "bad", UNAUTHENTICATED, {}, REST_401),
    "worker token for admin calls": Case("admin", "worker", OK, GRPC_DENIED_ADMIN, REST_READER),
    "worker certificate for admin calls": Case("worker", "", OK, GRPC_DENIED_ADMIN, REST_401),
}


@pytest.mark.parametrize("case", list(CASES))
def test_credentials_matrix(secure: Secure, case: str) -> None:
    c = CASES[case]
    token = "x" * 43 if c.token == "bad" else (secure.token(c.token) if c.token else "")
    folder = secure.other if c.cert_folder == "other" else secure.pki
    config = secure.config(c.cert, token, folder)
    codes = run_async(_grpc_codes(secure, config))
    expected = {name: c.grpc_special.get(name, c.grpc_default) for name in codes}
    assert codes == expected
    cert = (folder / f"{c.cert}.crt", folder / f"{c.cert}.key") if c.cert else None
    assert _rest_statuses(secure, cert, token) == c.rest
    # Whatever was refused, an admin still gets through: every service is healthy.
    assert set(run_async(_grpc_codes(secure, secure.config("admin"))).values()) <= {
        OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }


def test_plaintext_client_is_refused(secure: Secure) -> None:
    codes = run_async(_grpc_codes(secure, SecurityConfig()))
    assert set(codes.values()) == {UNAVAILABLE}
    base = f"http://{HOST}:{secure.cluster.services['coordinator'].info['http_port']}"
    with httpx.Client(base_url=base, timeout=5) as client, pytest.raises(httpx.TransportError):
        client.get("/v1/jobs")


def test_a_worker_cannot_speak_for_another_worker(secure: Secure) -> None:
    """worker-1 holds a valid worker certificate, but member ids bound to `worker` are not its."""

    async def run() -> dict[str, tuple[grpc.StatusCode, str]]:
        c = secure.cluster
        admin_config = secure.config("admin")
        async with create_channel(c.coordinator_address, admin_config) as channel:
            members = (
                await coord_grpc.CoordinatorStub(channel).GetCluster(coord_pb.GetClusterRequest(), timeout=5)
            ).members
        victim = next(m.member_id for m in members if m.role == common_pb.ROLE_WORKER)
        intruder = secure.config("worker-1")
        out: dict[str, tuple[grpc.StatusCode, str]] = {}

        async def record(name: str, call: Any) -> None:
            try:
                await call
                out[name] = (OK, "")
            except grpc.aio.AioRpcError as exc:
                out[name] = (exc.code(), exc.details() or "")

        async with create_channel(c.coordinator_address, intruder) as channel:
            stub = coord_grpc.CoordinatorStub(channel)
            await record(
                "register as shard",
                stub.Register(coord_pb.RegisterRequest(role=common_pb.ROLE_SHARD, address="127.0.0.1:1"), timeout=5),
            )
            await record(
                "resume the victim's id",
                stub.Register(coord_pb.RegisterRequest(role=common_pb.ROLE_WORKER, member_id=victim), timeout=5),
            )
            session = stub.Session(timeout=5)
            await session.write(coord_pb.SessionRequest(open=coord_pb.SessionOpen(member_id=victim)))
            await record("session as the victim", session.read())
        async with create_channel(c.address_of("shard-0"), intruder) as channel:
            exchange = shard_grpc.ParameterShardStub(channel).Exchange(timeout=5)
            opened = shard_pb.ExchangeOpen(job_id="any", worker_id=victim, membership_epoch=1)
            await exchange.write(shard_pb.ExchangeRequest(open=opened))
            await record("exchange as the victim", exchange.read())
        return out

    results = run_async(run())
    for name, (code, details) in results.items():
        assert code == DENIED, (name, code, details)
    assert "member_id" in results["resume the victim's id"][1]
    assert "open.member_id" in results["session as the victim"][1]
    assert "open.worker_id" in results["exchange as the victim"][1]


# --- secure by default ------------------------------------------------------------------
def _without_tidal_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}, **extra}


def _tidal(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidal", *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


SERVICE_ARGS = {
    "coordinator": ["coordinator", "--host", HOST, "--port", "0", "--http-port", "0", "--metrics-port", "0"],
    "shard": ["shard", "--coordinator", f"{HOST}:9", "--host", HOST, "--port", "0", "--metrics-port", "0"],
    "worker": ["worker", "--coordinator", f"{HOST}:9", "--host", HOST, "--port", "0", "--metrics-port", "0"],
    "status": ["status", "--coordinator", f"{HOST}:9"],
    "health": ["health", f"{HOST}:9"],
}


@pytest.mark.parametrize("command", list(SERVICE_ARGS))
def test_without_tls_every_command_refuses_to_start_with_one_line(command: str, tmp_path: Path) -> None:
    """Plaintext is never the silent default: exit 2 and one line naming what to set."""
    done = _tidal(SERVICE_ARGS[command], _without_tidal_env())
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"tidal {command}:" in line and "TIDAL_TLS_DIR" in line and "TIDAL_ALLOW_PLAINTEXT=1" in line, line
    assert "--allow-plaintext" in line and not done.stdout


def test_tls_asked_for_but_missing_files_is_an_error_even_with_plaintext_allowed(tmp_path: Path) -> None:
    """A TIDAL_TLS_DIR without the service's certificate never falls back to plaintext."""
    create_dev_pki(tmp_path, [("worker", "worker")])  # ca.crt and worker.crt, no coordinator.crt
    env = _without_tidal_env(TIDAL_TLS_DIR=str(tmp_path), TIDAL_ALLOW_PLAINTEXT="1")
    done = _tidal(SERVICE_ARGS["coordinator"], env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "although TLS was asked for" in done.stderr, done.stderr


def test_plaintext_asked_for_is_logged_loudly(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = _without_tidal_env(TIDAL_ALLOW_PLAINTEXT="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "tidal", *SERVICE_ARGS["coordinator"], "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, 90, "coordinator ready")
        assert ready.exists(), "the coordinator with TIDAL_ALLOW_PLAINTEXT=1 did not start"
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    text = out.decode(errors="replace")
    assert "SECURITY IS OFF" in text and "no TLS certificate" in text, text


def test_tools_scrape_https_metrics_with_the_same_tls_settings(secure: Secure) -> None:
    """`tidal compare` and `tidal advise` read /metrics with the cluster's CA and certificate;
    a page they cannot read is an error naming the URL and the cause, never an empty number."""
    url = secure.cluster.metrics_url("worker-0")
    assert url.startswith("https://")
    samples = scrape(url, secure.cluster.client_security().ssl_context())
    assert any(s.name == "tidal_build_info" for s in samples)
    with pytest.raises(UnavailableError, match=rf"cannot scrape {re.escape(url)}: it is HTTPS and no TLS settings"):
        scrape(url)
    untrusted = SecurityConfig(ca_path=secure.other / "ca.crt").ssl_context()
    with pytest.raises(UnavailableError, match=rf"cannot scrape {re.escape(url)}: .*CERTIFICATE_VERIFY_FAILED"):
        scrape(url, untrusted)
