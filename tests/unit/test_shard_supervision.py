"""A shard's own long-lived tasks (progress reporter, checkpoint schedule and writes) are supervised: when
one crashes, the traceback is logged and the shard shuts down with exit code 1 instead of serving
on half dead (shard/main.py's `serve_shard`)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from tidal.coordinator.control import Control
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.servicer import CoordinatorServicer
from tidal.core import commands
from tidal.core.checkpoint import CheckpointStore
from tidal.core.events import LayoutReport
from tidal.core.layout import Layout
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.shard_snapshot import ShardSnapshot
from tidal.core.shard_state import ShardState
from tidal.core.spec import parse_job_spec
from tidal.shard.checkpointing import CheckpointMetrics, ShardCheckpointer
from tidal.shard.main import ShardNode, serve_shard
from tidal.shard.metrics import ShardMetrics
from tidal.shard.runtime import ShardRuntime
from tidal.transport.member import MemberPorts, serve_member
from tidal.transport.server import create_server
from tidal.transport.session import MemberSession
from tidal.transport.supervise import Supervisor
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
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

    async def ignore(command: commands.Command) -> None:
        if isinstance(command, commands.PrepareWorker):
            layout = Layout((TensorInfo("w", (4,), "float32"),), "0" * 32)
            await session.send(LayoutReport(command.job.job_id, layout))

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


# --- the checkpoint writer ---------------------------------------------------------------------
class _GatedStore(CheckpointStore):
    """The real store, whose writes wait for a gate (a slow disk) and fail on request (a bug)."""

    def __init__(self, root: Path, fail: bool = False) -> None:
        super().__init__(root)
        self.fail = fail
        self.entered, self.gate = threading.Event(), threading.Event()
        self.finished = 0

    def write(self, snapshot: ShardSnapshot, keep_last: int | None = None) -> Path:
        self.entered.set()
        self.gate.wait()
        try:
            if self.fail:
                raise RuntimeError("checkpoint writer failed")
            return super().write(snapshot, keep_last)
        finally:
            self.finished += 1


def _checkpointer(store: CheckpointStore, supervisor: Supervisor) -> ShardCheckpointer:
    # Due at once: version 0 is newer than "none written", and every version counts.
    spec = parse_job_spec({"name": "ckpt", "num_workers": 1, "num_shards": 1, "checkpoint": {"every_versions": 1}})
    shard_map = build_shard_map([TensorInfo("w", (8,), "float32")], 1)
    state = ShardState(spec, 0, shard_map, torch.zeros(8), 1, ["w0"])
    return ShardCheckpointer(store, "job-1", state, CheckpointMetrics(CollectorRegistry()), supervisor=supervisor)


def test_a_crashed_checkpoint_write_stops_the_shard_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> list[str]:
        crashed = asyncio.Event()
        supervisor = Supervisor(crashed)
        store = _GatedStore(tmp_path, fail=True)
        store.gate.set()
        _checkpointer(store, supervisor).poke()
        await asyncio.wait_for(crashed.wait(), 60)  # unsupervised, nothing would ever set it
        await supervisor.close()
        return supervisor.failures

    with caplog.at_level(logging.ERROR, "tidal.transport.supervise"):
        assert asyncio.run(run()) == ["shard checkpoint writer"]
    [record] = caplog.records
    assert record.getMessage() == "shard checkpoint writer crashed; the process stops"
    assert record.exc_info is not None and str(record.exc_info[1]) == "checkpoint writer failed"


def test_close_cancels_the_write_in_progress_and_returns_once_its_thread_ended(tmp_path: Path) -> None:
    async def run() -> tuple[bool, int, int, list[str]]:
        supervisor = Supervisor(asyncio.Event())
        store = _GatedStore(tmp_path)
        checkpointer = _checkpointer(store, supervisor)
        checkpointer.poke()
        await asyncio.to_thread(store.entered.wait)
        [writer] = supervisor.running
        closing = asyncio.create_task(checkpointer.close())
        for _ in range(10):  # steps of the loop: a plain cancel-and-wait ends within three
            await asyncio.sleep(0)
        # Cancelled, but its thread still writes: close waits for it.
        waited_for_the_thread = writer.cancelling() > 0 and not closing.done()
        store.gate.set()
        await closing
        return waited_for_the_thread, store.finished, len(supervisor.running), supervisor.failures

    waited, finished, running, failures = asyncio.run(run())
    assert waited and finished == 1
    assert running == 0 and failures == []  # a cancelled write is no crash, and is forgotten
