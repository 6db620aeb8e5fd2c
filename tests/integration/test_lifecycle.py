"""Service lifecycle: NOT_SERVING until registered, graceful exit on SIGTERM, failure noticed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests.integration.helpers import PLAINTEXT, run_async, submit, wait_for_job, wait_until
from tidal.client import check_health
from tidal.core.events import Heartbeat
from tidal.launcher import LocalCluster
from tidal.transport.server import create_channel
from tidal.transport.session import MemberSession
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

pytestmark = pytest.mark.integration


def test_shard_is_not_serving_until_it_reaches_the_coordinator(tmp_path: Path) -> None:
    ready = tmp_path / "ports.json"
    # Port 9 (discard) on loopback: nothing listens, so registration keeps retrying.
    shard = subprocess.Popen(
        [sys.executable, "-m", "tidal", "shard", "--coordinator", "127.0.0.1:9", "--host", "127.0.0.1",
         "--port", "0", "--metrics-port", "0", "--register-timeout", "2", "--ready-file", str(ready),
         "--allow-plaintext"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = shard.communicate(timeout=60)
    finally:
        if shard.poll() is None:
            shard.kill()
    # It gave up after its registration deadline with one clear error, and never claimed readiness.
    assert shard.returncode == 1
    assert b"registration failed" in out and b"127.0.0.1:9" in out
    assert not ready.exists()


def test_sigterm_stops_a_shard_gracefully_and_it_leaves_the_cluster(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, num_shards=1, worker_slowdowns=(), heartbeat_timeout_s=3.0) as cluster:
        address = cluster.address_of("shard-0")
        assert run_async(check_health(address, PLAINTEXT)) == "SERVING"
        cluster.kill("shard-0", signal.SIGTERM)
        assert cluster.services["shard-0"].process.wait(timeout=20) == 0
        assert run_async(check_health(address, PLAINTEXT, timeout_s=1)).startswith("UNAVAILABLE")

        def shard_failed() -> bool:
            with grpc.insecure_channel(cluster.coordinator_address) as channel:
                members = (
                    coord_grpc.CoordinatorStub(channel).GetCluster(coord_pb.GetClusterRequest(), timeout=5).members
                )
            # It said goodbye: it left on purpose, it did not fail.
            return [m.state for m in members] == [common_pb.MEMBER_STATE_LEFT]

        wait_until(shard_failed, timeout_s=15, what="coordinator marks the stopped shard as left")


def test_the_running_coordinator_maps_no_torch_and_starts_no_child(tmp_path: Path) -> None:
    """The real `tidal coordinator` process, after planning and running a job: no torch library
    in its address space and no child process; the workers built the model and announced it."""
    with LocalCluster(tmp_path, num_shards=1, worker_slowdowns=(1.0,)) as cluster:
        job = submit(cluster.coordinator_address, {"name": "light", "num_workers": 1, "steps": 5})
        assert wait_for_job(cluster.coordinator_address, job.job_id).state == common_pb.JOB_STATE_SUCCEEDED
        pid = cluster.services["coordinator"].process.pid
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps
        assert Path(f"/proc/{pid}/task/{pid}/children").read_text().split() == []


def test_losing_workers_below_min_workers_fails_the_sync_job_with_a_clear_message(tmp_path: Path) -> None:
    """Below min_workers a worker loss must end the job loudly, never hang it."""
    with LocalCluster(tmp_path, num_shards=1, worker_slowdowns=(1.0, 1.0), heartbeat_timeout_s=3.0) as cluster:
        spec = {"name": "doomed", "mode": "sync", "num_workers": 2, "min_workers": 2, "steps": 100000, "batch_size": 8}
        job = submit(cluster.coordinator_address, spec)
        wait_until(
            lambda: (cluster.workdir / "logs" / "worker-1.log").read_text().count("training samples") >= 1,
            timeout_s=60,
            what="worker-1 training",
        )
        cluster.kill("worker-1", signal.SIGKILL)
        final = wait_for_job(cluster.coordinator_address, job.job_id, timeout_s=60)
        assert final.state == common_pb.JOB_STATE_FAILED
        assert "worker" in final.message and "lost" in final.message and "min_workers is 2" in final.message


def test_cancelling_senders_never_breaks_a_member_session(tmp_path: Path) -> None:
    """Regression: grpc.aio cancels a whole call when a write is cancelled midway. Members
    cancel tasks that report progress (on release), so sends must never write directly."""

    async def scenario(coordinator: str) -> list[int]:
        session = MemberSession(coordinator, common_pb.ROLE_WORKER, PLAINTEXT, name="canceller")
        await session.register(10)
        runner = asyncio.create_task(session.run(lambda command: asyncio.sleep(0)))
        await asyncio.wait_for(session.opened.wait(), 10)  # the coordinator's welcome
        payload = Heartbeat(seq=0)
        for _ in range(200):
            senders = [asyncio.create_task(session.send(payload)) for _ in range(5)]
            await asyncio.sleep(0)
            for task in senders:
                task.cancel()
        await asyncio.sleep(1.5)
        assert not runner.done(), runner
        async with create_channel(coordinator, PLAINTEXT) as channel:
            members = (await coord_grpc.CoordinatorStub(channel).GetCluster(coord_pb.GetClusterRequest())).members
        runner.cancel()
        await session.close()
        return [m.state for m in members]

    with LocalCluster(tmp_path, num_shards=0, worker_slowdowns=()) as cluster:
        states = run_async(scenario(cluster.coordinator_address))
    assert states == [common_pb.MEMBER_STATE_IDLE]
