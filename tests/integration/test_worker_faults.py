"""Worker loss and elastic join on a real cluster (1 coordinator, 2 shards, 3 workers):
kill -9 a worker at a random step (sync and async, several seeds), the same worker twice in
a row, two at once; a worker that says goodbye on SIGTERM; a worker joining mid-run.

Every job completes, and every acknowledged push is accounted for: the shards' applied
updates equal the pushes acknowledged to the workers, the dead ones included. In sync the
barrier re-forms within 2 heartbeat timeouts (measured from the worker's death to the
shards passing the version the barrier waited on). Figures are printed as "FIGURE ...".
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.fault_cluster import HEARTBEAT_TIMEOUT_S, FaultCluster, seconds_until_shards_pass
from tests.integration.helpers import submit, wait_for_job, wait_until
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb

pytestmark = pytest.mark.integration

# Always "no rain" scores 0.605; sync reaches ~0.72. Async varies more from run to run: with
# the sync job's settings (lr 0.05, momentum 0.9, 120 steps) its last few stale updates move
# the weights a lot, and a kill early in the job on a loaded machine ended at 0.638 and 0.655
# in CI. So the async kill jobs train longer at a 25x smaller effective step (plain SGD at
# lr 0.02, 300 steps, 900 updates), which 8 runs with kills under a CPU hog put at 0.693-0.734;
# the bar stays where it was, clear of the majority baseline.
TARGET_ACCURACY = {"sync": 0.68, "async": 0.64}
ASYNC_KILL_JOB = {"optimizer": {"name": "sgd", "lr": 0.02}, "steps": 300}
SPEC: dict[str, Any] = {
    "model": {"name": "mlp", "args": {"hidden": [32, 16]}},
    "dataset": {"name": "seattle_weather"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 32,
    "num_shards": 2,
    "num_workers": 3,
    "step_timeout_s": 30,
}


# Long jobs train with plain SGD: momentum 0.9 at lr 0.05 overfits this small data set over
# a thousand steps (validation accuracy falls to ~0.64); lr 0.02 holds 0.70-0.74 from 400 to
# 2000 steps (batch 64-96).
LONG = {"optimizer": {"name": "sgd", "lr": 0.02}}


def paced(ranks: range, delay_s: float = 0.02) -> list[dict[str, Any]]:
    """Stragglers entries that add `delay_s` to every step of these ranks: a job long enough
    for a restarted worker process (10-30 s to start on a busy machine) to join it."""
    return [{"rank": r, "delay": {"distribution": "constant", "mean_s": delay_s}} for r in ranks]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    with FaultCluster(tmp_path_factory.mktemp("worker-faults")) as c:
        yield c


@pytest.fixture(autouse=True)
def three_live_workers(cluster: FaultCluster) -> Iterator[None]:
    """Every test starts with three idle worker processes (a dead one is started again)."""
    for name in [n for n in cluster.services if n.startswith("worker-")]:
        if not cluster.services[name].alive():
            cluster.respawn(name)
    wait_until(lambda: _idle_workers(cluster) >= 3, timeout_s=30, what="three idle workers")
    yield


def _idle_workers(cluster: FaultCluster) -> int:
    return sum(state == common_pb.MEMBER_STATE_IDLE for state in cluster.members().values())


def _by_rank(status: coord_pb.JobStatus) -> dict[int, coord_pb.WorkerStatus]:
    return {w.rank: w for w in status.workers}


def _succeeded(status: coord_pb.JobStatus) -> None:
    assert status.state == common_pb.JOB_STATE_SUCCEEDED, status.message
    assert status.val_accuracy >= TARGET_ACCURACY[status.mode], status.val_accuracy


def _wait_dead(cluster: FaultCluster, name: str, timeout_s: float = 60.0) -> float:
    """Waits for a worker process to die; returns the monotonic time it was seen dead."""
    process = cluster.services[name].process
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} still alive after {timeout_s}s")
        time.sleep(0.002)
    return time.monotonic()


@pytest.mark.parametrize(("mode", "seed"), [("sync", 0), ("sync", 1), ("sync", 2), ("async", 0), ("async", 1)])
def test_kill_9_one_worker_at_a_random_step_and_the_job_completes(cluster: FaultCluster, mode: str, seed: int) -> None:
    rng = random.Random(seed)
    rank, kill_at = rng.randrange(3), rng.randrange(10, 80)
    spec = {**SPEC, "name": f"kill-{mode}-{seed}", "mode": mode, "seed": seed, "steps": 120,
            "stragglers": [{"rank": rank, "kill_at_step": kill_at}]}  # fmt: skip
    if mode == "async":
        spec.update(ASYNC_KILL_JOB)
    steps = spec["steps"]
    job = submit(cluster.coordinator_address, spec)
    cluster.wait_for_version(job.job_id, 1)
    victim = cluster.service_of(_by_rank(cluster.job(job.job_id))[rank].member_id)
    dead_at = _wait_dead(cluster, victim)
    if mode == "sync":
        # The victim died before pushing for clock kill_at: the barrier of that version waits
        # for it until the coordinator drops it.
        seconds_until_shards_pass(cluster, kill_at, timeout_s=2 * HEARTBEAT_TIMEOUT_S + 10)
        reform_s = time.monotonic() - dead_at
        print(f"FIGURE sync barrier re-formed {reform_s * 1000:.0f} ms after kill -9 (seed {seed}, step {kill_at})")
        assert reform_s < 2 * HEARTBEAT_TIMEOUT_S
    final = wait_for_job(cluster.coordinator_address, job.job_id, timeout_s=120)
    _succeeded(final)
    workers = _by_rank(final)
    assert workers[rank].lost == "failed"
    assert sorted(r for r, w in workers.items() if not w.lost) == sorted({0, 1, 2} - {rank})
    # Every acknowledged push is in the parameters: the victim had exactly kill_at pushes
    # acknowledged (it dies before its step kill_at), the survivors report theirs.
    acked = kill_at + sum(w.pushes for r, w in workers.items() if r != rank)
    assert final.updates_applied == 2 * acked, (final.updates_applied, acked)
    assert final.updates_rejected == 0
    if mode == "sync":
        assert acked == 3 * kill_at + 2 * (steps - kill_at)
        assert final.version == steps
    else:
        assert final.version >= steps * 3  # async stops once the shards applied steps x num_workers
    assert final.membership_epoch >= 2


@pytest.mark.slow
def test_kill_the_same_worker_twice_in_a_row(cluster: FaultCluster) -> None:
    steps = 2000
    spec = {**SPEC, **LONG, "name": "twice", "mode": "sync", "seed": 3, "steps": steps, "stragglers": paced(range(3))}
    job = submit(cluster.coordinator_address, spec)
    status = cluster.wait_for_version(job.job_id, 30)
    victim = cluster.service_of(_by_rank(status)[2].member_id)
    for round_ in range(2):
        version = cluster.job(job.job_id).version
        cluster.kill(victim, signal.SIGKILL)
        _wait_dead(cluster, victim)
        # The restarted process registers as a new member and refills the job with a fresh rank.
        cluster.respawn(victim)
        newcomer = cluster.member_id(victim)
        wait_until(
            lambda: any(w.member_id == newcomer and w.step >= 10 for w in cluster.job(job.job_id).workers),  # noqa: B023
            timeout_s=90,
            what=f"restarted worker training (round {round_})",
        )
        assert cluster.job(job.job_id).version > version
    final = wait_for_job(cluster.coordinator_address, job.job_id, timeout_s=300)
    _succeeded(final)
    workers = _by_rank(final)
    assert sorted(workers) == [0, 1, 2, 3, 4]
    assert [workers[r].lost for r in range(5)] == ["", "", "failed", "failed", ""]
    assert all(w.pushes > 0 for w in workers.values())
    assert final.version == steps


def test_kill_two_workers_at_once(cluster: FaultCluster) -> None:
    spec = {**SPEC, "name": "two-at-once", "mode": "sync", "seed": 4, "steps": 150}
    job = submit(cluster.coordinator_address, spec)
    status = cluster.wait_for_version(job.job_id, 30)
    victims = [cluster.service_of(_by_rank(status)[r].member_id) for r in (0, 2)]
    for name in victims:
        cluster.kill(name, signal.SIGKILL)
    dead_at = max(_wait_dead(cluster, name) for name in victims)
    seconds_until_shards_pass(cluster, min(cluster.shard_versions()), timeout_s=2 * HEARTBEAT_TIMEOUT_S + 10)
    reform_s = time.monotonic() - dead_at
    print(f"FIGURE sync: two workers killed at once, the barrier re-formed {reform_s * 1000:.0f} ms after")
    assert reform_s < 2 * HEARTBEAT_TIMEOUT_S
    final = wait_for_job(cluster.coordinator_address, job.job_id, timeout_s=120)
    _succeeded(final)
    assert [w.lost for w in sorted(final.workers, key=lambda w: w.rank)] == ["failed", "", "failed"]
    assert final.version == 150
    # Every push each worker saw acknowledged reached both shards (the dead ones' last
    # reports are lower bounds: the job only succeeds once the shards account for them).
    assert final.updates_applied >= 2 * sum(w.pushes for w in final.workers)


@pytest.mark.slow
def test_a_worker_stopped_with_sigterm_leaves_and_a_new_one_joins_mid_run(cluster: FaultCluster) -> None:
    # SIGTERM: the worker says goodbye (LEFT, not FAILED) and exits 0.
    leaver = "worker-2"
    leaver_id = cluster.member_id(leaver)
    cluster.kill(leaver, signal.SIGTERM)
    assert cluster.services[leaver].process.wait(timeout=30) == 0
    wait_until(lambda: cluster.members()[leaver_id] == common_pb.MEMBER_STATE_LEFT, timeout_s=10, what="LEFT")

    # A job of 2 workers that may grow to 3: a worker started mid-run joins it.
    steps = 1200
    spec = {**SPEC, **LONG, "name": "grow", "mode": "sync", "seed": 5, "steps": steps,
            "num_workers": 2, "max_workers": 3, "stragglers": paced(range(2))}  # fmt: skip
    job = submit(cluster.coordinator_address, spec)
    cluster.wait_for_version(job.job_id, 40)
    epoch = cluster.job(job.job_id).membership_epoch
    joined_at = cluster.job(job.job_id).version
    cluster.respawn(leaver)
    joiner = cluster.member_id(leaver)
    final = wait_for_job(cluster.coordinator_address, job.job_id, timeout_s=300)
    _succeeded(final)
    workers = _by_rank(final)
    assert sorted(workers) == [0, 1, 2] and workers[2].member_id == joiner
    assert all(not w.lost and w.finished and w.pushes > 0 for w in workers.values())
    assert final.membership_epoch == epoch + 1
    # It joined after the start, so it pushed for fewer versions than the others.
    assert workers[2].pushes <= steps - joined_at < workers[0].pushes
    # Every push reached both shards; a barrier waits for the joiner only from its first push
    # there, so that first gradient may come too late for its clock (at most one per shard).
    assert final.updates_applied + final.updates_rejected == 2 * sum(w.pushes for w in workers.values())
    assert final.updates_rejected <= 2
    print(f"FIGURE joiner pushed {workers[2].pushes} of {steps} versions (joined after version {joined_at})")
