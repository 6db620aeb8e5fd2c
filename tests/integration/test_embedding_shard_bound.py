"""Issue 20's "a table larger than any one shard's share of memory trains on 2 shards", on a real
cluster of processes (coordinator, two shards, two workers): each shard is started with a bound
on the bytes of embedding rows it holds (`--max-embedding-bytes`, here through its environment
variable) of 60% of the table. On one shard the job is refused at once, the message naming the
field and the bound; split over two shards the same job trains, touches every row of the table
(more rows than one shard may hold), and each shard stays within its bound.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.helpers import submit, wait_for_job
from tidal.config import ENV
from tidal.core.embeddings.budget import row_bytes
from tidal.core.spec import parse_job_spec
from tidal.launcher import LocalCluster
from tidal.v1 import common_pb2 as common_pb

pytestmark = pytest.mark.integration

ROWS = 4000
TABLE: dict[str, Any] = {"name": "items", "num_embeddings": ROWS, "dim": 8, "optimizer": {"name": "adagrad", "lr": 0.1}}
JOB_TIMEOUT_S = 300.0


def job(num_shards: int) -> dict[str, Any]:
    # Uniform ids (zipf 0): 2 workers x 60 steps x 256 samples draw every one of the 4,000 ids
    # but a handful (about 4000 * e^-7.7 = 2 expected to be missed).
    return {
        "name": f"bound-{num_shards}",
        "mode": "sync",
        "model": {"name": "ctr_mlp", "args": {"fields": ["items"], "dim": 8, "hidden": [8]}},
        "dataset": {"name": "ctr_synthetic", "args": {"vocab_sizes": [ROWS], "zipf": 0.0, "num_samples": 20_000,
                                                      "num_val": 500}},
        "optimizer": {"name": "adam", "lr": 0.01},
        "batch_size": 256,
        "steps": 60,
        "num_workers": 2,
        "num_shards": num_shards,
        "seed": 11,
        "embeddings": [TABLE],
    }  # fmt: skip


PER_ROW = row_bytes(parse_job_spec(job(2)).embeddings[0])
BOUND = int(0.6 * ROWS * PER_ROW)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {ENV["max_embedding_bytes"]: str(BOUND)}
    with LocalCluster(tmp_path_factory.mktemp("shard-bound"), num_shards=2, env=env) as c:
        yield c


def shard_gauge(cluster: LocalCluster, shard: str, name: str, job_id: str) -> float:
    with urllib.request.urlopen(cluster.metrics_url(shard), timeout=10) as reply:
        text = reply.read().decode()
    found = re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.MULTILINE)
    values = [float(v) for labels, v in found if f'tidal_job="{job_id}"' in labels and 'table="items"' in labels]
    assert len(values) == 1, (shard, name, found)
    return values[0]


def test_on_one_shard_the_table_is_refused_naming_the_field(cluster: LocalCluster) -> None:
    final = wait_for_job(cluster.coordinator_address, submit(cluster.coordinator_address, job(1)).job_id,
                         timeout_s=JOB_TIMEOUT_S)  # fmt: skip
    assert final.state == common_pb.JOB_STATE_FAILED, final
    assert "embeddings: the tables' share of shard 0 (of num_shards 1) may need" in final.message, final.message
    assert f"'items' {ROWS:,} rows x {PER_ROW} bytes" in final.message, final.message
    assert f"bound of {BOUND:,} bytes (--max-embedding-bytes); num_shards: 2 would fit" in final.message


def test_split_over_two_shards_the_table_trains_each_shard_within_its_bound(cluster: LocalCluster) -> None:
    final = wait_for_job(cluster.coordinator_address, submit(cluster.coordinator_address, job(2)).job_id,
                         timeout_s=JOB_TIMEOUT_S)  # fmt: skip
    assert final.state == common_pb.JOB_STATE_SUCCEEDED, final.message
    shards = ("shard-0", "shard-1")
    rows = [shard_gauge(cluster, s, "tidal_shard_embedding_rows", final.job_id) for s in shards]
    held = [shard_gauge(cluster, s, "tidal_shard_embedding_held_bytes", final.job_id) for s in shards]
    # More rows trained than one shard may hold, and each shard within its bound.
    assert sum(rows) * PER_ROW > BOUND, (rows, BOUND)
    assert sum(rows) >= ROWS - 40, rows
    assert all(0 < h <= BOUND for h in held), (held, BOUND)
