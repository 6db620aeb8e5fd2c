"""A shard's own long-lived tasks (progress reporter, checkpoint schedule) are supervised: when
one crashes, the traceback is logged and the shard shuts down with exit code 1 instead of serving
on half dead (shard/main.py's `serve_shard`)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from tidal.coordinator.control import Control
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.servicer import CoordinatorServicer
from tidal.core.events import LayoutReport
from tidal.core.layout import Layout
from tidal.core.shard_map import TensorInfo
from tidal.shard.main import ShardNode, serve_shard
from tidal.shard.metrics import ShardMetrics
from tidal.shard.runtime import ShardRuntime
from tidal.transport.member import MemberPorts, serve_member
from tidal.transport.member_convert import event_to_proto
from tidal.transport.server import create_server
from tidal.transport.session import MemberSession
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

PLAINTEXT = SecurityConfig()
SPEC = {"name": "broken", "model": {"name": "mlp", "args": {"hidden": [4]}}, "num_workers": 1, "num_shards": 1}


class BrokenReporterShard(ShardNode):
    """The real shard node, whose progress reporter fails as a bug in it would."""

    async def _report_progress(self, runtime: ShardRuntime) -> None:
        raise RuntimeError("reporter failed")


async def _idle_worker(coordinator: str) -> None:
    """A real worker session that reports a layout when asked to prepare and does nothing else:
    the job needs its worker's layout before its shard is assigned."""

    async def ignore(msg: coord_pb.SessionResponse) -> None:
        if msg.WhichOneof("kind") == "prepare_worker":
            layout = Layout((TensorInfo("w", (4,), "float32"),), "0" * 32)
            await session.send(event_to_proto(LayoutReport(msg.prepare_worker.job_id, layout)))

    session = MemberSession(coordinator, common_pb.ROLE_WORKER, PLAINTEXT, name="idle")
    try:
        await session.register(30.0)
        await session.run(ignore)
    finally:
        await session.close()


async def _serve_broken_shard() -> int:
    control = Control(CoordinatorCounters(CollectorRegistry()), 1.0, 600.0)
    coordinator, coordinator_port = create_server("127.0.0.1:0", PLAINTEXT)
    coord_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(control), coordinator)
    await coordinator.start()
    address = f"127.0.0.1:{coordinator_port}"
    worker = asyncio.create_task(_idle_worker(address))
    try:
        server, port = create_server("127.0.0.1:0", PLAINTEXT)
        session = MemberSession(address, common_pb.ROLE_SHARD, PLAINTEXT, address=f"127.0.0.1:{port}", name="broken")
        node = BrokenReporterShard(session, ShardMetrics(CollectorRegistry()))
        member = serve_member(
            "shard", server, MemberPorts("127.0.0.1", port, 0), CollectorRegistry(), session, node, [], None, 30.0,
            security=PLAINTEXT,
        )  # fmt: skip
        serving = asyncio.create_task(serve_shard(member, node))
        await control.submit(json.dumps(SPEC))  # queued until both members are idle, then assigned
        return await serving
    finally:
        worker.cancel()
        await asyncio.wait({worker})
        await coordinator.stop(None)


def test_a_crashed_progress_reporter_ends_the_shard_non_zero_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        # The timeout only keeps a regression (a shard serving on) from hanging the suite.
        code = asyncio.run(asyncio.wait_for(_serve_broken_shard(), 120))
    assert code == 1
    crashes = [r for r in caplog.records if r.getMessage() == "shard progress reporter crashed; the process stops"]
    assert crashes, [r.getMessage() for r in caplog.records]
    assert crashes[0].exc_info is not None
    assert str(crashes[0].exc_info[1]) == "reporter failed"
