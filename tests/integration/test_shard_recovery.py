"""Shard loss on a real cluster: kill -9 a shard mid-training (sync and async), crash it inside
a checkpoint write, truncate its newest checkpoint, SIGTERM it. Each time it is restarted with
the same --checkpoint-dir, restores the newest valid checkpoint, the workers reconnect and the
job completes with the target accuracy; the coordinator reports exactly what was lost.

Every wait is bounded; everything runs on loopback. The figures printed (recovery time,
versions lost) are the ones docs/fault-tolerance.md reports.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import coordinator_stub, submit, wait_for_job, wait_for_running_version
from tidal.launcher import EPHEMERAL, LocalCluster, Service
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

pytestmark = pytest.mark.integration

EVERY = 20  # checkpoint every this many versions
# Always "no rain" scores 0.605 (tests/integration/test_training.py). Sync is deterministic apart
# from the versions lost to the kill; in async timing decides which version each gradient is
# computed from, and a killed shard loses the updates since its last checkpoint. Of 166 async
# runs of this job (110 without a fault, 56 with a shard killed or drained; 2026-12-05, some
# beside a busy loop), two ended below 0.66: a drain run (below the bar; its figure was not
# kept) and a fault-free one at 0.652; the rest 0.66-0.751, median 0.71. So async's bar is
# test_worker_faults' 0.64, still well above 0.605.
TARGET_ACCURACY = {"sync": 0.68, "async": 0.64}
SPEC: dict[str, Any] = {
    "model": {"name": "mlp", "args": {"hidden": [64, 64]}},
    "dataset": {"name": "seattle_weather"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 32,
    "seed": 7,
    "num_shards": 2,
    "num_workers": 2,
    "steps": 300,
    "checkpoint": {"every_versions": EVERY, "every_s": 0, "keep_last": 3, "restart_timeout_s": 60},
}


class CheckpointingCluster(LocalCluster):
    """Shards with a checkpoint folder each (kept across restarts)."""

    def checkpoint_dir(self, name: str) -> Path:
        return self.workdir / "checkpoints" / name

    def spawn_shard(self, name: str, extra: tuple[str, ...] = ()) -> Service:
        args = ["shard", "--coordinator", self.coordinator_address, *EPHEMERAL]
        return self.spawn(name, [*args, "--checkpoint-dir", str(self.checkpoint_dir(name)), *extra])

    def restart_shard(self, name: str) -> None:
        """Starts a dead shard again with the same folder (and without any fault flag)."""
        old = self.services[name]
        old.process.wait(30)
        old.log.close()
        self.spawn_shard(name)
        self.wait_ready([name])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[CheckpointingCluster]:
    with CheckpointingCluster(tmp_path, num_shards=0, worker_slowdowns=()) as c:
        yield c


def start(cluster: CheckpointingCluster, fault_shard1: tuple[str, ...] = ()) -> None:
    cluster.spawn_shard("shard-0")
    cluster.spawn_shard("shard-1", fault_shard1)
    cluster.spawn_worker("worker-0")
    cluster.spawn_worker("worker-1")
    cluster.wait_ready(["shard-0", "shard-1", "worker-0", "worker-1"])


def job_status(cluster: LocalCluster, job_id: str) -> coord_pb.JobStatus:
    return coordinator_stub(cluster.coordinator_address).GetJob(coord_pb.GetJobRequest(job_id=job_id), timeout=10).job


def wait_for_version(cluster: LocalCluster, job_id: str, version: int) -> None:
    wait_for_running_version(cluster.coordinator_address, job_id, version, timeout_s=120)


def checkpoint_versions(cluster: CheckpointingCluster, name: str, job_id: str, index: int) -> list[int]:
    folder = cluster.checkpoint_dir(name) / job_id / f"shard-{index}"
    return sorted(int(p.stem[1:]) for p in folder.glob("v*.json"))


def finish(cluster: LocalCluster, job_id: str) -> coord_pb.JobStatus:
    final = wait_for_job(cluster.coordinator_address, job_id, timeout_s=240)
    assert final.state == common_pb.JOB_STATE_SUCCEEDED, final.message
    assert final.val_accuracy >= TARGET_ACCURACY[final.mode], final
    assert len(final.shard_restarts) == 1, final.shard_restarts
    return final


def report(what: str, final: coord_pb.JobStatus, lost_version: int) -> None:
    r = final.shard_restarts[0]
    print(
        f"\n{what}: killed at version >= {lost_version}, restored version {r.restored_version}, "
        f"versions lost {r.versions_lost}, updates lost {r.updates_lost}, recovery {r.recovery_s:.2f}s, "
        f"final val acc {final.val_accuracy:.3f}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_9_a_shard_mid_training(cluster: CheckpointingCluster, mode: str) -> None:
    start(cluster)
    job = submit(cluster.coordinator_address, {**SPEC, "name": f"kill-shard-{mode}", "mode": mode})
    kill_at = 110 if mode == "sync" else 230  # async counts one version per gradient
    wait_for_version(cluster, job.job_id, kill_at)
    cluster.kill("shard-1", signal.SIGKILL)
    lost_at = job_status(cluster, job.job_id).version
    cluster.restart_shard("shard-1")
    final = finish(cluster, job.job_id)
    restart = final.shard_restarts[0]
    report(f"kill -9 ({mode})", final, lost_at)
    # A checkpoint every EVERY versions, started right after the push that completes the
    # interval: at most one interval is lost, plus what a fast async job applies while the
    # previous write is still in flight (the next one starts when it finishes).
    assert 0 <= restart.versions_lost <= EVERY + 10
    # Each lost version held one push per worker in sync, one push in async.
    per_version = 2 if mode == "sync" else 1
    assert restart.updates_lost >= restart.versions_lost * per_version - 2
    assert final.state == common_pb.JOB_STATE_SUCCEEDED


def test_crash_inside_a_checkpoint_write_restores_the_previous_one(cluster: CheckpointingCluster) -> None:
    """The shard SIGKILLs itself in its 4th write, after the tensor file is fsynced under its
    temporary name and before the rename: that checkpoint never existed; the 3rd is restored."""
    start(cluster, ("--checkpoint-fault", "kill_before_rename:4"))
    job = submit(cluster.coordinator_address, {**SPEC, "name": "crash-in-write", "mode": "sync"})
    shard = cluster.services["shard-1"]
    shard.process.wait(120)
    assert shard.process.returncode == -signal.SIGKILL
    index = _index_of(cluster, "shard-1", job.job_id)
    folder = cluster.checkpoint_dir("shard-1") / job.job_id / f"shard-{index}"
    leftovers = list(folder.glob(".v*.tmp-*"))
    assert leftovers, "the killed write left its temporary file"
    valid = checkpoint_versions(cluster, "shard-1", job.job_id, index)
    assert valid == [0, EVERY, 2 * EVERY]
    cluster.restart_shard("shard-1")
    final = finish(cluster, job.job_id)
    assert final.shard_restarts[0].restored_version == 2 * EVERY
    # Only the dead write's files: the restarted shard may be mid-write of its own right now.
    assert not [p for p in leftovers if p.exists()], "the restore cleans up the leftover"
    report("crash inside a checkpoint write", final, 3 * EVERY)


def test_truncated_checkpoint_falls_back_to_the_previous_one(cluster: CheckpointingCluster) -> None:
    start(cluster)
    job = submit(cluster.coordinator_address, {**SPEC, "name": "truncated", "mode": "sync"})
    wait_for_version(cluster, job.job_id, 3 * EVERY + 5)
    cluster.kill("shard-0", signal.SIGKILL)
    cluster.services["shard-0"].process.wait(30)
    index = _index_of(cluster, "shard-0", job.job_id)
    versions = checkpoint_versions(cluster, "shard-0", job.job_id, index)
    newest = cluster.checkpoint_dir("shard-0") / job.job_id / f"shard-{index}" / f"v{versions[-1]:012d}.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    cluster.restart_shard("shard-0")
    final = finish(cluster, job.job_id)
    assert final.shard_restarts[0].restored_version == versions[-2]
    log = cluster.services["shard-0"].log_path.read_text()
    assert "truncated" in log and "falling back to the previous checkpoint" in log
    report("truncated newest checkpoint", final, versions[-1])


def test_every_checkpoint_corrupt_fails_the_job_with_data_loss(cluster: CheckpointingCluster) -> None:
    start(cluster)
    job = submit(cluster.coordinator_address, {**SPEC, "name": "all-corrupt", "mode": "sync"})
    wait_for_version(cluster, job.job_id, EVERY + 5)
    cluster.kill("shard-0", signal.SIGKILL)
    cluster.services["shard-0"].process.wait(30)
    index = _index_of(cluster, "shard-0", job.job_id)
    for path in (cluster.checkpoint_dir("shard-0") / job.job_id / f"shard-{index}").glob("*.safetensors"):
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    cluster.restart_shard("shard-0")
    final = wait_for_job(cluster.coordinator_address, job.job_id, timeout_s=120)
    assert final.state == common_pb.JOB_STATE_FAILED
    assert "no valid checkpoint" in final.message and "checksum mismatch" in final.message, final.message


def test_sigterm_drains_writes_a_final_checkpoint_and_loses_nothing(cluster: CheckpointingCluster) -> None:
    start(cluster)
    job = submit(cluster.coordinator_address, {**SPEC, "name": "drain", "mode": "async"})
    wait_for_version(cluster, job.job_id, 150)
    index = _index_of(cluster, "shard-1", job.job_id)
    cluster.kill("shard-1", signal.SIGTERM)
    shard = cluster.services["shard-1"]
    assert shard.process.wait(30) == 0
    final_checkpoint = checkpoint_versions(cluster, "shard-1", job.job_id, index)[-1]
    folder = cluster.checkpoint_dir("shard-1") / job.job_id / f"shard-{index}"
    manifest = json.loads((folder / f"v{final_checkpoint:012d}.json").read_text())
    assert manifest["version"] == final_checkpoint
    cluster.restart_shard("shard-1")
    final = finish(cluster, job.job_id)
    restart = final.shard_restarts[0]
    assert restart.restored_version == final_checkpoint
    assert restart.versions_lost == 0 and restart.updates_lost == 0
    report("SIGTERM drain", final, final_checkpoint)


def _index_of(cluster: LocalCluster, name: str, job_id: str) -> int:
    """The shard index the job gave the named shard (from its checkpoint folder)."""
    folders = list((cluster.workdir / "checkpoints" / name / job_id).glob("shard-*")) if job_id else []
    deadline = time.monotonic() + 30
    while not folders and time.monotonic() < deadline:
        time.sleep(0.05)
        folders = list((cluster.workdir / "checkpoints" / name / job_id).glob("shard-*"))
    assert len(folders) == 1, folders
    return int(folders[0].name.removeprefix("shard-"))
