"""Reads a job's trained parameters back from its shards (to plot what the cluster learned)."""

from __future__ import annotations

import torch

from tidal.core.errors import TidalError
from tidal.core.shard_map import ShardMap
from tidal.core.torch_dtypes import torch_dtype
from tidal.transport import serde
from tidal.transport.server import create_channel
from tidal.transport.tls import SecurityConfig
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc

READ_TIMEOUT_S = 30.0


async def read_job_parameters(
    shard_addresses: list[str], job_id: str, shard_map: ShardMap, security: SecurityConfig
) -> torch.Tensor:
    """The job's flat parameter vector as its shards hold it now, read over channels secured by `security`."""
    flat = torch.empty(shard_map.total_elements, dtype=torch_dtype(shard_map.dtype))
    found: set[int] = set()
    for address in shard_addresses:
        async with create_channel(address, security) as channel:
            stub = shard_grpc.ParameterShardStub(channel)
            info = await stub.GetShardInfo(shard_pb.GetShardInfoRequest(), timeout=READ_TIMEOUT_S)
            if info.job_id != job_id:
                continue
            start, end = shard_map.ranges[info.shard_index]
            assembler = serde.SliceAssembler(shard_map.segments(info.shard_index), start, flat[start:end], "params")
            request = shard_pb.ReadParametersRequest(job_id=job_id)
            async for reply in stub.ReadParameters(request, timeout=READ_TIMEOUT_S):
                assembler.add(reply.params.chunks)
            assembler.finish()
            found.add(info.shard_index)
    if found != set(range(shard_map.num_shards)):
        raise TidalError(f"job {job_id}: parameters found on shards {sorted(found)} of {shard_map.num_shards}")
    return flat
