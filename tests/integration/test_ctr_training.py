"""Jobs with embedding tables on a real cluster of processes (coordinator, two shards, two
workers on loopback): the examples in examples/ctr/ train ``ctr_mlp`` on ``ctr_synthetic`` with
its tables on the shards (issue 20, docs/embeddings.md "The worker's step").

- hybrid (sync dense parameters, async tables) reaches a validation AUC well above chance, near
  the planted model's, and both shards hold rows of both tables afterwards (ReadRows);
- all-sync and all-async run to completion and report AUC;
- a model that reads a table the spec declares with another width, or does not declare, fails
  the job within seconds, naming the worker, the table and both widths;
- a shard killed with SIGKILL mid-job and restarted from its checkpoint: the job completes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.byo import member_id
from tests.integration.helpers import (
    PLAINTEXT,
    coordinator_stub,
    run_async,
    shard_addresses,
    submit,
    wait_for_job,
    wait_for_running_version,
    wait_until,
)
from tests.integration.test_shard_recovery import CheckpointingCluster, job_status
from tidal.client import load_spec_file
from tidal.core.ctr.synthetic import ctr_synthetic
from tidal.core.embeddings.routing import shard_of
from tidal.launcher import LocalCluster
from tidal.transport import rows as wire
from tidal.transport.server import create_channel
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "ctr"
README_COMMAND = "tidal submit examples/ctr/hybrid.yaml --wait"
JOB_TIMEOUT_S = 300.0
# The hang guard of a job that must fail, not a timing assertion: it fails within seconds.
FAIL_WITHIN_S = 60.0


def example(file: str, **changes: Any) -> dict[str, Any]:
    return {**load_spec_file(EXAMPLES / f"{file}.yaml"), **changes}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("ctr-training"), num_shards=2) as c:
        yield c


def run(cluster: LocalCluster, spec: dict[str, Any]) -> coord_pb.JobStatus:
    job = submit(cluster.coordinator_address, spec)
    final = wait_for_job(cluster.coordinator_address, job.job_id, timeout_s=JOB_TIMEOUT_S)
    assert final.state == common_pb.JOB_STATE_SUCCEEDED, final.message
    assert final.val_metric == "auc", final
    return final


async def _held(address: str, job_id: str, table: str, num_embeddings: int) -> tuple[int, int]:
    """(shard index, rows of `table` it holds), asked with every id the routing gives it."""
    async with create_channel(address, PLAINTEXT) as channel:
        stub = shard_grpc.ParameterShardStub(channel)
        index = (await stub.GetShardInfo(shard_pb.GetShardInfoRequest(), timeout=10)).shard_index
        ids = torch.arange(num_embeddings, dtype=torch.int64)
        mine = ids[shard_of(table, ids, 2) == index]
        request = shard_pb.ReadRowsRequest(job_id=job_id, table=table, ids=wire.encode_ids(mine))
        reply = await stub.ReadRows(request, timeout=30)
    return index, sum(1 for h in reply.held if h)


def test_hybrid_trains_to_an_auc_near_the_planted_one_with_rows_on_both_shards(cluster: LocalCluster) -> None:
    # Submitted as the README's "Sparse embedding tables" section says, through bash.
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TIDAL_COORDINATOR": cluster.coordinator_address,
        "TIDAL_ALLOW_PLAINTEXT": "1",
    }
    command = ["bash", "-c", README_COMMAND]
    timeout = JOB_TIMEOUT_S
    done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert README_COMMAND in (ROOT / "README.md").read_text()
    job_id = done.stdout.splitlines()[0].strip()
    final = job_status(cluster, job_id)
    assert final.state == common_pb.JOB_STATE_SUCCEEDED and final.val_metric == "auc", final
    assert f"val auc {final.val_accuracy:.3f}" in done.stdout + done.stderr, (done.stdout, done.stderr)
    print(done.stdout.splitlines()[-1])
    spec = example("hybrid")
    args = spec["dataset"]["args"]
    planted = ctr_synthetic(rank=0, world_size=1, seed=spec["seed"], **args).val.planted
    assert planted is not None
    print(f"\nhybrid: validation AUC {final.val_accuracy:.3f}, planted AUC {planted.auc:.3f}")
    assert 0.65 < final.val_accuracy < planted.auc + 0.03
    for table in spec["embeddings"]:
        held = [
            run_async(_held(address, final.job_id, table["name"], table["num_embeddings"]))
            for address in shard_addresses(cluster.coordinator_address)
        ]
        assert sorted(index for index, _ in held) == [0, 1], held
        assert all(rows > 0 for _, rows in held), (table["name"], held)
    # The workers' row metrics: what each step pulled and pushed, per table.
    for worker in ("worker-0", "worker-1"):
        for table in ("ads", "sites"):
            pulled = worker_metric(cluster, worker, "tidal_worker_embedding_rows_pulled_total", final.job_id, table)
            pushed = worker_metric(cluster, worker, "tidal_worker_embedding_rows_pushed_total", final.job_id, table)
            ratio = worker_metric(cluster, worker, "tidal_worker_embedding_unique_ratio", final.job_id, table)
            sent = worker_metric(cluster, worker, "tidal_worker_embedding_bytes_total", final.job_id, table)
            # Every id a step pulled gets a gradient row; a batch of 128 repeats the 100 sites.
            assert pulled == pushed > 0 and 0 < ratio <= 1 and sent > 0, (worker, table, pulled, pushed, ratio)
            if table == "sites":
                assert ratio < 1
    # Evaluations (every 40 versions, and the final one) pull rows too, counted apart.
    for table in ("ads", "sites"):
        evaluated = sum(
            worker_metric(cluster, worker, "tidal_worker_embedding_eval_rows_pulled_total", final.job_id, table, 0.0)
            for worker in ("worker-0", "worker-1")
        )
        assert evaluated > 0, table


def worker_metric(
    cluster: LocalCluster, worker: str, name: str, job_id: str, table: str, absent: float | None = None
) -> float:
    """The worker's series of `name` for the job and table; `absent` where it has none (None: it must)."""
    with urllib.request.urlopen(cluster.metrics_url(worker), timeout=10) as reply:
        text = reply.read().decode()
    found = re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.MULTILINE)
    values = [float(v) for labels, v in found if f'tidal_job="{job_id}"' in labels and f'table="{table}"' in labels]
    if not values and absent is not None:
        return absent
    assert len(values) == 1, (name, found)
    return values[0]


@pytest.mark.parametrize("name", ["all-sync", "all-async"])
def test_all_sync_and_all_async_run_to_completion(cluster: LocalCluster, name: str) -> None:
    final = run(cluster, example(name))
    print(f"\n{name}: validation AUC {final.val_accuracy:.4f}")
    assert final.val_accuracy > 0.6


def _failed(cluster: LocalCluster, spec: dict[str, Any]) -> str:
    job = submit(cluster.coordinator_address, spec)
    final = wait_for_job(cluster.coordinator_address, job.job_id, timeout_s=FAIL_WITHIN_S)
    assert final.state == common_pb.JOB_STATE_FAILED, (final.state, final.message)

    def idle() -> bool:
        members = coordinator_stub(cluster.coordinator_address).GetCluster(coord_pb.GetClusterRequest()).members
        return sum(m.role == common_pb.ROLE_WORKER and m.state == common_pb.MEMBER_STATE_IDLE for m in members) == 2

    wait_until(idle, FAIL_WITHIN_S, "both workers idle again")
    assert any(member_id(cluster, w) in final.message for w in ("worker-0", "worker-1")), final.message
    return final.message


def test_a_table_width_the_model_does_not_read_fails_the_job(cluster: LocalCluster) -> None:
    spec = example("hybrid")
    spec["embeddings"] = [{**spec["embeddings"][0], "dim": 4}, spec["embeddings"][1]]
    message = _failed(cluster, spec)
    assert "spec.embeddings[0].dim" in message and "'ads'" in message, message
    assert "with dim 8" in message and "declares dim 4" in message, message


def test_a_table_the_spec_lacks_fails_the_job(cluster: LocalCluster) -> None:
    spec = example("hybrid")
    spec["embeddings"] = spec["embeddings"][:1]
    message = _failed(cluster, spec)
    assert "reads embedding table 'sites' (dim 8), which the job spec does not declare" in message, message


@pytest.fixture
def checkpointing(tmp_path: Path) -> Iterator[CheckpointingCluster]:
    with CheckpointingCluster(tmp_path, num_shards=0, worker_slowdowns=()) as c:
        c.spawn_shard("shard-0")
        c.spawn_shard("shard-1")
        c.spawn_worker("worker-0")
        c.spawn_worker("worker-1")
        c.wait_ready(["shard-0", "shard-1", "worker-0", "worker-1"])
        yield c


def test_a_shard_killed_and_restarted_mid_job(checkpointing: CheckpointingCluster) -> None:
    checkpoint = {"every_versions": 20, "every_s": 0, "keep_last": 2, "restart_timeout_s": 120}
    spec = example("hybrid", name="ctr-shard-kill", steps=300, eval_every=0, checkpoint=checkpoint)
    address = checkpointing.coordinator_address
    job = submit(address, spec)

    wait_for_running_version(address, job.job_id, 60)
    checkpointing.kill("shard-1", signal.SIGKILL)
    checkpointing.restart_shard("shard-1")
    final = wait_for_job(address, job.job_id, timeout_s=JOB_TIMEOUT_S)
    assert final.state == common_pb.JOB_STATE_SUCCEEDED, final.message
    assert len(final.shard_restarts) == 1, final.shard_restarts
    print(f"\nshard kill: versions lost {final.shard_restarts[0].versions_lost}, AUC {final.val_accuracy:.3f}")
    assert final.val_accuracy > 0.6
