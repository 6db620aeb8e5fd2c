"""A shard's or worker's long-lived tasks are supervised (transport/member.py): when one crashes,
the member logs the traceback, shuts down as on SIGTERM and exits with code 1."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tidal.coordinator.control import Control
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.servicer import CoordinatorServicer
from tidal.core import commands
from tidal.core.membership import Role
from tidal.transport.member import MemberPorts, serve_member
from tidal.transport.server import create_server
from tidal.transport.session import MemberSession
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

PLAINTEXT = SecurityConfig()


class Node:
    """A member that does nothing with its commands; with `broken`, handling one raises (a bug)."""

    def __init__(self, broken: bool) -> None:
        self.broken = broken
        self.released = 0

    async def on_command(self, command: commands.Command) -> None:
        if self.broken:
            raise RuntimeError(f"handling {type(command).__name__} failed")

    async def release(self) -> None:
        self.released += 1

    async def resume(self, resumed: bool) -> None:
        return None


async def _serve_member(node: Node, metrics_security: SecurityConfig = PLAINTEXT) -> int:
    # A real coordinator servicer on a real server: the member registers and opens its session.
    control = Control(CoordinatorCounters(CollectorRegistry()), 1.0, 600.0)
    coordinator, coordinator_port = create_server("127.0.0.1:0", PLAINTEXT)
    coord_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(control), coordinator)
    await coordinator.start()
    # A job waits for a worker: the member is asked to prepare it as soon as its session opens.
    shard, _ = control.register(Role.SHARD, "127.0.0.1:1", "shard")
    await control.open_session(shard.member_id)
    await control.submit(json.dumps({"num_workers": 1, "num_shards": 1}))
    try:
        server, port = create_server("127.0.0.1:0", PLAINTEXT)
        session = MemberSession(f"127.0.0.1:{coordinator_port}", common_pb.ROLE_WORKER, PLAINTEXT, name="broken")
        return await serve_member(
            "worker", server, MemberPorts("127.0.0.1", port, 0), CollectorRegistry(), session, node, [], None, 30.0,
            security=metrics_security,
        )  # fmt: skip
    finally:
        await coordinator.stop(None)


def _crashes(caplog: pytest.LogCaptureFixture, task: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == f"{task} crashed; the process stops"]


def test_a_crashed_session_ends_the_member_non_zero_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    node = Node(broken=True)
    with caplog.at_level(logging.ERROR):
        code = asyncio.run(asyncio.wait_for(_serve_member(node), 120))
    assert code == 1
    crashes = _crashes(caplog, "coordinator session")
    assert crashes, [r.getMessage() for r in caplog.records]
    assert crashes[0].exc_info is not None
    assert str(crashes[0].exc_info[1]) == "handling PrepareWorker failed"
    assert node.released >= 1  # it still shut down in order


def test_a_crashed_metrics_server_ends_the_member_non_zero(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # /metrics over HTTPS with a certificate that is no PEM: its server task fails as it starts.
    # Unsupervised, the member would serve on without metrics (and this test would time out).
    (garbage := tmp_path / "garbage.pem").write_text("not a certificate")
    broken_https = SecurityConfig(cert_path=garbage, key_path=garbage)
    with caplog.at_level(logging.ERROR):
        code = asyncio.run(asyncio.wait_for(_serve_member(Node(broken=False), broken_https), 120))
    assert code == 1
    crashes = _crashes(caplog, "metrics server")
    assert crashes and crashes[0].exc_info is not None, [r.getMessage() for r in caplog.records]
