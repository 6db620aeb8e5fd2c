"""Shared by the integration tests: talk to real services with real gRPC clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import torch

from tidal.core.plan import job_dataset, job_model, job_shard_map
from tidal.core.shard_map import ShardMap
from tidal.core.spec import JobSpec, parse_job_spec
from tidal.transport import serde
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc

JOB_TIMEOUT_S = 120.0


def coordinator_stub(address: str) -> coord_grpc.CoordinatorStub:
    return coord_grpc.CoordinatorStub(grpc.insecure_channel(address))


def submit(address: str, spec: dict[str, Any]) -> coord_pb.JobStatus:
    import json

    return coordinator_stub(address).SubmitJob(coord_pb.SubmitJobRequest(spec_json=json.dumps(spec)), timeout=30).job


def wait_for_job(address: str, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> coord_pb.JobStatus:
    """Follows WatchJob until the job is terminal; bounded by `timeout_s`."""
    stub = coordinator_stub(address)
    last = None
    for reply in stub.WatchJob(coord_pb.WatchJobRequest(job_id=job_id), timeout=timeout_s):
        last = reply.job
    assert last is not None
    return last


def run_job(address: str, spec: dict[str, Any]) -> coord_pb.JobStatus:
    job = submit(address, spec)
    final = wait_for_job(address, job.job_id)
    assert final.state == common_pb.JOB_STATE_SUCCEEDED, final.message
    return final


def shard_addresses(address: str) -> list[str]:
    members = coordinator_stub(address).GetCluster(coord_pb.GetClusterRequest(), timeout=10).members
    return [m.address for m in members if m.role == common_pb.ROLE_SHARD and m.state != common_pb.MEMBER_STATE_FAILED]


def plan(spec_dict: dict[str, Any]) -> tuple[JobSpec, torch.nn.Module, ShardMap]:
    spec = parse_job_spec(spec_dict)
    model = job_model(spec, job_dataset(spec))
    return spec, model, job_shard_map(spec, model)


def read_parameters(shards: list[str], job_id: str, shard_map: ShardMap) -> tuple[torch.Tensor, list[int]]:
    """The job's flat parameter vector as the shards hold it now, and each shard's version."""
    flat = torch.empty(shard_map.total_elements, dtype=shard_map.dtype)
    versions = {}
    for address in shards:
        with grpc.insecure_channel(address) as channel:
            stub = shard_grpc.ParameterShardStub(channel)
            info = stub.GetShardInfo(shard_pb.GetShardInfoRequest(), timeout=10)
            if info.job_id != job_id:
                continue
            start, end = shard_map.ranges[info.shard_index]
            segments = shard_map.segments(info.shard_index)
            assembler = serde.SliceAssembler(segments, start, flat[start:end], "params")
            for reply in stub.ReadParameters(shard_pb.ReadParametersRequest(job_id=job_id), timeout=30):
                assembler.add(reply.params.chunks)
                versions[info.shard_index] = reply.params.version
            assembler.finish()
    assert sorted(versions) == list(range(shard_map.num_shards)), f"shards found: {sorted(versions)}"
    return flat, [versions[i] for i in sorted(versions)]


def wait_until(predicate: Any, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_s}s")
        time.sleep(0.05)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (a test's work folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def run_async(coro: Any, timeout_s: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))
