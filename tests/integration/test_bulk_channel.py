"""The bulk channel (transport/bulk.py) on real processes: workers that ask for it get one from
every shard, in plaintext and over mutual TLS, and train exactly what inline gRPC trains."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from tidal.client import TidalClient
from tidal.climate.params import read_job_parameters
from tidal.core.plan import job_dataset_info, job_model, job_shard_map
from tidal.core.spec import parse_job_spec
from tidal.launcher import LocalCluster
from tidal.security.bundle import create_bundle, environment
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb

pytestmark = pytest.mark.integration


def spec(name: str, mode: str, codec: str = "none") -> dict[str, Any]:
    return {
        "name": name,
        "mode": mode,
        "model": {"name": "mlp", "args": {"hidden": [32, 32]}},
        "dataset": {"name": "synthetic", "args": {"num_samples": 1024}},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "compression": {"codec": codec},
        "batch_size": 16,
        "seed": 5,
        "num_workers": 2,
        "num_shards": 2,
        "steps": 12,
    }


async def train(cluster: LocalCluster, security: SecurityConfig, spec_dict: dict[str, Any]) -> torch.Tensor:
    """Runs the job to the end; its final parameters as the shards hold them."""
    async with TidalClient(cluster.coordinator_address, security) as client:
        job = await client.submit(spec_dict)
        final = job
        async for status in client.watch(job.job_id):
            final = status
        assert final.state == common_pb.JOB_STATE_SUCCEEDED, final.message
        parsed = parse_job_spec(spec_dict)
        shard_map = job_shard_map(parsed, job_model(parsed, job_dataset_info(parsed)))
        shards = [m.address for m in await client.cluster() if m.role == common_pb.ROLE_SHARD]
        return await read_job_parameters(shards, final.job_id, shard_map, security)


def streams_by_transport(cluster: LocalCluster, security: SecurityConfig) -> dict[str, float]:
    """tidal_shard_exchange_streams_total of the last job, summed over the shards, by transport."""
    found: dict[str, float] = {}
    context = security.ssl_context()
    for name in ("shard-0", "shard-1"):
        url = cluster.metrics_url(name)
        with urllib.request.urlopen(url, timeout=10, context=context) as reply:
            text = reply.read().decode()
        for transport, value in re.findall(r'tidal_shard_exchange_streams_total\{[^}]*transport="(\w+)"\} (\S+)', text):
            found[transport] = found.get(transport, 0.0) + float(value)
    return found


@pytest.fixture(scope="module")
def inline_sync(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """The sync job's final parameters with every tensor inline: what a bulk channel must train."""
    inline_env = {"TIDAL_SHARED_MEMORY": "off", "TIDAL_BULK_CHANNEL": "off"}
    root = tmp_path_factory.mktemp("inline")
    with LocalCluster(root, num_shards=2, worker_slowdowns=(1.0, 1.0), env=inline_env) as cluster:
        return asyncio.run(train(cluster, cluster.client_security(), spec("inline", "sync")))


def test_bulk_channel_in_plaintext_goes_message_by_message_and_trains_what_inline_grpc_trains(
    tmp_path: Path, inline_sync: torch.Tensor
) -> None:
    env = {"TIDAL_SHARED_MEMORY": "off", "TIDAL_BULK_CHANNEL": "on"}
    root = tmp_path / "bulk"
    with LocalCluster(root, num_shards=2, worker_slowdowns=(1.0, 1.0), env=env) as cluster:
        over_bulk = asyncio.run(train(cluster, cluster.client_security(), spec("bulk", "sync")))
        streams = streams_by_transport(cluster, cluster.client_security())
    assert torch.equal(over_bulk, inline_sync)
    assert streams.get("bulk") == 4 and streams.get("grpc") == 0, streams
    logs = "".join(path.read_text() for path in (root / "logs").glob("worker-*.log"))
    assert logs.count("tensors travel on a bulk channel, message by message") >= 4


def test_bulk_channel_over_mutual_tls_trains_what_inline_grpc_trains(tmp_path: Path, inline_sync: torch.Tensor) -> None:
    inline = inline_sync

    pki = tmp_path / "pki"
    create_bundle(pki)
    bulk_env = {**environment(pki), "TIDAL_SHARED_MEMORY": "off", "TIDAL_BULK_CHANNEL": "on"}
    root = tmp_path / "bulk"
    with LocalCluster(root, num_shards=2, worker_slowdowns=(1.0, 1.0), env=bulk_env) as cluster:
        security = SecurityConfig.from_env(environment(pki, "admin"))
        over_bulk = asyncio.run(train(cluster, security, spec("bulk", "sync")))
        # Async with bf16 both ways: narrower blocks, and pushes that interleave with serves.
        asyncio.run(train(cluster, security, spec("bulk-async", "async", "bf16")))
        streams = streams_by_transport(cluster, security)
    # The same batches, the same mean gradients, the same float32 arithmetic on the shards.
    assert torch.equal(over_bulk, inline)
    # The running (last) job's streams: 2 workers x 2 shards, every one on a bulk channel.
    assert streams.get("bulk") == 4 and streams.get("grpc") == 0, streams
    logs = "".join(path.read_text() for path in (root / "logs").glob("worker-*.log"))
    assert logs.count("tensors travel on a bulk channel") >= 8
    # The sync job's streams went piece by piece, on a return connection each; async ones do not.
    assert logs.count("tensors travel on a bulk channel, message by message") >= 4
    assert "payloads travel inline from now on" not in logs
