"""A network partition of one worker: the worker runs in its own network namespace, joined
to the host by a veth pair (a local virtual link: nothing leaves the machine); the test
takes the link down, so its packets are dropped without any error reaching either side.
The coordinator declares the worker failed after the heartbeat timeout, the sync barrier
re-forms over the other two, and when the link is back the worker's session notices that it
was dropped, it registers as a new member and rejoins the job. Figures print as "FIGURE ...".

Network namespaces need root (CAP_NET_ADMIN). Without it the test is skipped with the
reason, except under CI=true, where it fails: CI must run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fault_cluster import HEARTBEAT_TIMEOUT_S, FaultCluster
from tests.integration.helpers import submit, wait_for_job, wait_until
from tidal.v1 import common_pb2 as common_pb

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _can_make_namespaces() -> str:
    """Empty if this process may create network namespaces, else why not."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return ""


@pytest.fixture
def namespace() -> Iterator[tuple[str, str, str, str]]:
    """(namespace, host-side link, host address, namespace address); removed afterwards."""
    why = _can_make_namespaces()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the partition test: {why}")
        pytest.skip(why)
    tag = os.getpid() % 50_000
    ns, host_link, ns_link = f"tidal-p{tag}", f"tdh{tag}", f"tdn{tag}"
    octet = 16 + tag % 200
    host_ip, ns_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        _ip("link", "set", ns_link, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_link)
        _ip("-n", ns, "link", "set", ns_link, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_link, host_ip, ns_ip
    finally:
        # Best effort: deleting the namespace also removes its end of the link.
        subprocess.run(["ip", "link", "del", host_link], capture_output=True, timeout=10, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)


SPEC = {
    "name": "partitioned",
    "mode": "sync",
    "model": {"name": "mlp", "args": {"hidden": [32, 16]}},
    "dataset": {"name": "seattle_weather"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 32,
    "seed": 8,
    "num_shards": 2,
    "num_workers": 3,
    "steps": 1500,
    "step_timeout_s": 60,
}


def test_a_partitioned_worker_is_declared_failed_and_rejoins_when_the_partition_heals(
    tmp_path: Path, namespace: tuple[str, str, str, str]
) -> None:
    ns, host_link, host_ip, ns_ip = namespace
    # Everything binds the host end of the link (a local address, reachable from the host too).
    with FaultCluster(tmp_path, num_workers=2, host=host_ip) as cluster:
        args = ["worker", "--coordinator", cluster.coordinator_address, "--host", ns_ip, "--port", "0",
                "--metrics-port", "0"]  # fmt: skip
        cluster.spawn("worker-ns", args, prefix=("ip", "netns", "exec", ns))
        cluster.wait_ready(["worker-ns"])
        isolated = cluster.member_id("worker-ns")
        job = submit(cluster.coordinator_address, SPEC)
        status = cluster.wait_for_version(job.job_id, 50)
        assert isolated in {w.member_id for w in status.workers}

        _ip("link", "set", host_link, "down")
        cut_at = time.monotonic()
        wait_until(
            lambda: cluster.members()[isolated] == common_pb.MEMBER_STATE_FAILED,
            timeout_s=2 * HEARTBEAT_TIMEOUT_S + 5,
            what="the partitioned worker declared failed",
        )
        detected_s = time.monotonic() - cut_at
        version = cluster.job(job.job_id).version
        cluster.wait_for_version(job.job_id, version + 20, timeout_s=2 * HEARTBEAT_TIMEOUT_S + 10)
        print(f"FIGURE partition: declared failed {detected_s:.2f} s after the link went down "
              f"(heartbeat timeout {HEARTBEAT_TIMEOUT_S} s); the other two trained on")  # fmt: skip
        assert detected_s < 2 * HEARTBEAT_TIMEOUT_S + 1

        time.sleep(1.0)
        _ip("link", "set", host_link, "up")
        healed_at = time.monotonic()

        def rejoined() -> str:
            workers = cluster.job(job.job_id).workers
            fresh = [w for w in workers if w.rank >= 3 and not w.lost and w.pushes > 0]
            return fresh[0].member_id if fresh else ""

        wait_until(lambda: bool(rejoined()), timeout_s=60, what="the healed worker rejoined the job")
        rejoin_s = time.monotonic() - healed_at
        print(f"FIGURE partition: rejoined (pushing again) {rejoin_s:.2f} s after the link came back")
        assert cluster.services["worker-ns"].alive()
        final = wait_for_job(cluster.coordinator_address, job.job_id, timeout_s=180)
        assert final.state == common_pb.JOB_STATE_SUCCEEDED, final.message
        by_rank = {w.rank: w for w in final.workers}
        assert by_rank[2].member_id == isolated and by_rank[2].lost == "failed"
        assert by_rank[3].member_id != isolated and by_rank[3].pushes > 0 and not by_rank[3].lost
