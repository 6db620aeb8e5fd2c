"""A local cluster for fault-injection tests: short heartbeats, services restartable under
the same arguments (the coordinator on the same port), and direct views of job and shards.

Every wait here is bounded; everything runs on loopback unless a test moves a worker into
a network namespace (tests/integration/test_partition.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from tests.integration.helpers import coordinator_stub
from tidal.launcher import HOST, LocalCluster, Service
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc

# Short, so failures are detected fast; docs/fault-tolerance.md quotes figures for these.
HEARTBEAT_INTERVAL_S = 0.2
HEARTBEAT_TIMEOUT_S = 1.0


class FaultCluster(LocalCluster):
    def __init__(
        self,
        workdir: Path,
        num_workers: int = 3,
        state_dir: Path | None = None,
        host: str = HOST,
    ) -> None:
        super().__init__(workdir, num_shards=2, worker_slowdowns=(1.0,) * num_workers)
        self.heartbeat_timeout_s = HEARTBEAT_TIMEOUT_S
        self.state_dir = state_dir
        self.host = host

    def start(self) -> FaultCluster:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.spawn_coordinator(port=0)
        self.wait_ready(["coordinator"])
        for i in range(self.num_shards):
            self.spawn_shard(f"shard-{i}")
        for i in range(len(self.worker_slowdowns)):
            self.spawn_worker(f"worker-{i}")
        self.wait_ready(list(self.services))
        return self

    def ephemeral(self) -> list[str]:
        return ["--host", self.host, "--port", "0", "--metrics-port", "0"]

    @property
    def coordinator_address(self) -> str:
        return f"{self.host}:{self.services['coordinator'].info['grpc_port']}"

    def address_of(self, name: str) -> str:
        return f"{self.host}:{self.services[name].info['grpc_port']}"

    def spawn_coordinator(self, port: int) -> Service:
        args = [
            "coordinator", "--host", self.host, "--port", str(port), "--metrics-port", "0", "--http-port", "0",
            "--heartbeat-interval", str(HEARTBEAT_INTERVAL_S), "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S),
        ]  # fmt: skip
        if self.state_dir is not None:
            args += ["--state-dir", str(self.state_dir)]
        return self.spawn("coordinator", args)

    def spawn_shard(self, name: str) -> Service:
        return self.spawn(name, ["shard", "--coordinator", self.coordinator_address, *self.ephemeral()])

    def spawn_worker(self, name: str, slowdown: float = 1.0) -> Service:
        return self.spawn(name, ["worker", "--coordinator", self.coordinator_address, *self.ephemeral()])

    def respawn(self, name: str) -> Service:
        """Starts a dead service again with the arguments it had (a new process)."""
        old = self.services[name]
        old.process.wait(30)
        old.log.close()
        service = self.spawn(name, old.args)
        self.wait_ready([name])
        return service

    def restart_coordinator(self) -> float:
        """Starts the (dead) coordinator again on its old port, with the same state folder;
        returns the seconds until it was ready."""
        old = self.services["coordinator"]
        port = old.info["grpc_port"]
        old.process.wait(30)
        old.log.close()
        started = time.monotonic()
        self.spawn_coordinator(port)
        self.wait_ready(["coordinator"])
        return time.monotonic() - started

    def member_id(self, name: str) -> str:
        return str(self.services[name].info["member_id"])

    def service_of(self, member_id: str) -> str:
        return next(n for n, s in self.services.items() if s.info.get("member_id") == member_id)

    def job(self, job_id: str) -> coord_pb.JobStatus:
        return coordinator_stub(self.coordinator_address).GetJob(coord_pb.GetJobRequest(job_id=job_id), timeout=10).job

    def members(self) -> dict[str, int]:
        reply = coordinator_stub(self.coordinator_address).GetCluster(coord_pb.GetClusterRequest(), timeout=10)
        return {m.member_id: m.state for m in reply.members}

    def shard_versions(self) -> list[int]:
        """Each shard's version, asked of the shards themselves (works without a coordinator)."""
        versions = []
        for i in range(self.num_shards):
            with grpc.insecure_channel(self.address_of(f"shard-{i}")) as channel:
                info = shard_grpc.ParameterShardStub(channel).GetShardInfo(shard_pb.GetShardInfoRequest(), timeout=5)
            versions.append(info.version)
        return versions

    def wait_for_version(self, job_id: str, version: int, timeout_s: float = 60.0) -> coord_pb.JobStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.job(job_id)
            if status.version >= version:
                return status
            if status.state not in (common_pb.JOB_STATE_RUNNING, common_pb.JOB_STATE_PENDING):
                raise AssertionError(f"job ended before version {version}: {status.state} {status.message}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not at version {version} within {timeout_s}s (at {status.version})")
            time.sleep(0.02)


def seconds_until_shards_pass(cluster: FaultCluster, version: int, timeout_s: float) -> float:
    """Polls the shards until every one is past `version`; returns the seconds it took."""
    started = time.monotonic()
    while min(cluster.shard_versions()) <= version:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"shards did not pass version {version} within {timeout_s}s")
        time.sleep(0.005)
    return time.monotonic() - started
