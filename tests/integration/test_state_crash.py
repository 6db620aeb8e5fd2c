"""Crash consistency of the coordinator's state: kill -9 a coordinator while clients keep
submitting jobs and registering members (so its writer thread is busy), then check that the
state file left behind loads, holds every job whose submit was acknowledged, and that a
coordinator restarted on it serves all of them. Twice, on the same state folder.
"""

from __future__ import annotations

import shutil
import signal
import threading
from pathlib import Path

import grpc
import pytest

from tests.integration.fault_cluster import FaultCluster
from tests.integration.helpers import coordinator_stub, submit, wait_until
from tidal.coordinator.store import StateStore
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

pytestmark = [pytest.mark.integration]

# Pending jobs: no members run them, so every submit is a save and nothing else.
SPEC = {"name": "crash", "mode": "sync", "num_workers": 1, "num_shards": 1, "steps": 5}
# Acknowledged submits each round before the kill (the load goes on until the kill).
ACKED_PER_ROUND = 15


class Load:
    """Clients that submit and register as fast as they can until the coordinator dies."""

    def __init__(self, address: str, submitters: int = 3, registrars: int = 2) -> None:
        self.address = address
        self.acked: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._submit) for _ in range(submitters)]
        self._threads += [threading.Thread(target=self._register) for _ in range(registrars)]
        for thread in self._threads:
            thread.start()

    def _submit(self) -> None:
        while True:
            try:
                job = submit(self.address, SPEC)
            except grpc.RpcError:
                return  # the coordinator died: this submit was never acknowledged
            with self._lock:
                self.acked.append(job.job_id)

    def _register(self) -> None:
        stub = coordinator_stub(self.address)
        request = coord_pb.RegisterRequest(role=common_pb.ROLE_WORKER, name="crash-test")
        while True:
            try:
                stub.Register(request, timeout=10)
            except grpc.RpcError:
                return

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=30)
            assert not thread.is_alive()


def saved_job_ids(state_dir: Path, copy_to: Path) -> set[str]:
    """The jobs in a copy of the state (so loading it changes nothing the restart reads);
    loading checks every row."""
    shutil.copytree(state_dir, copy_to)
    store = StateStore(copy_to)
    try:
        return {job.job_id for job in store.load(now=0.0).jobs}
    finally:
        store.close()


def test_a_coordinator_killed_while_saving_keeps_every_acknowledged_job(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    cluster = FaultCluster(tmp_path, state_dir=state_dir)
    (tmp_path / "logs").mkdir()
    acked: set[str] = set()
    try:
        cluster.spawn_coordinator(port=0)
        cluster.wait_ready(["coordinator"])
        for round_ in range(2):
            load = Load(cluster.coordinator_address)
            wait_until(lambda load=load: load.count() >= ACKED_PER_ROUND, timeout_s=120, what="submits acknowledged")
            cluster.kill("coordinator", signal.SIGKILL)
            assert cluster.services["coordinator"].process.wait(timeout=30) == -signal.SIGKILL
            load.join()
            acked |= set(load.acked)

            missing = acked - saved_job_ids(state_dir, tmp_path / f"copy-{round_}")
            assert not missing, f"acknowledged but not saved: {sorted(missing)}"

            cluster.restart_coordinator()
            reply = coordinator_stub(cluster.coordinator_address).ListJobs(coord_pb.ListJobsRequest(), timeout=30)
            served = {job.job_id for job in reply.jobs}
            assert acked <= served
            print(f"FIGURE round {round_}: {len(acked)} acknowledged jobs, {len(served)} saved, none lost")
    finally:
        cluster.stop()
