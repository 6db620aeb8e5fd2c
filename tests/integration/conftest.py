from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tidal.launcher import LocalCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real cluster of processes on loopback: 1 coordinator, 2 shards, 2 workers."""
    workdir: Path = tmp_path_factory.mktemp("cluster")
    with LocalCluster(workdir, num_shards=2, worker_slowdowns=(1.0, 1.0)) as c:
        yield c


@pytest.fixture(scope="module")
def lone_shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A coordinator and one shard, no workers: the test itself plays the worker."""
    with LocalCluster(tmp_path_factory.mktemp("lone-shard"), num_shards=1, worker_slowdowns=()) as c:
        yield c
