"""Shared by the integration tests: talk to real services with real gRPC clients."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import torch

from tidal.core import commands, events
from tidal.core.plan import job_dataset, job_model, job_shard_map
from tidal.core.shard_map import ShardMap
from tidal.core.spec import JobSpec, parse_job_spec
from tidal.core.torch_dtypes import torch_dtype
from tidal.launcher import LocalCluster
from tidal.transport import serde
from tidal.transport.server import create_channel
from tidal.transport.session import MemberSession
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc
from tidal.worker.prepare import prepare_job

JOB_TIMEOUT_S = 120.0
# The local clusters of these tests run without TLS (launcher.py): so do their clients.
PLAINTEXT = SecurityConfig()


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
    model = job_model(spec, job_dataset(spec, model_modules=None))
    return spec, model, job_shard_map(spec, model)


def read_parameters(shards: list[str], job_id: str, shard_map: ShardMap) -> tuple[torch.Tensor, list[int]]:
    """The job's flat parameter vector as the shards hold it now, and each shard's version."""
    flat = torch.empty(shard_map.total_elements, dtype=torch_dtype(shard_map.dtype))
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


def wait_for_running_version(address: str, job_id: str, version: int, timeout_s: float = JOB_TIMEOUT_S) -> None:
    """Waits until the running job reached `version`. PENDING is a step on the way (a worker that
    just registered may not have reported itself idle yet); any other state fails at once."""

    def reached() -> bool:
        status = coordinator_stub(address).GetJob(coord_pb.GetJobRequest(job_id=job_id), timeout=10).job
        assert status.state in (common_pb.JOB_STATE_PENDING, common_pb.JOB_STATE_RUNNING), status.message
        return status.state == common_pb.JOB_STATE_RUNNING and status.version >= version

    wait_until(reached, timeout_s=timeout_s, what=f"job version {version}")


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


def exchange_streams(cluster: LocalCluster, shard: str, transport: str) -> float:
    """Exchange streams the shard `shard` opened with tensors travelling by `transport`
    (shared_memory or grpc), for its current or last job, from its /metrics page."""
    with urllib.request.urlopen(cluster.metrics_url(shard), timeout=10) as reply:
        text = reply.read().decode()
    found = re.findall(rf'tidal_shard_exchange_streams_total{{[^}}]*transport="{transport}"[^}}]*}} (\S+)', text)
    return sum(float(v) for v in found)


def run_async(coro: Any, timeout_s: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def exchange(address: str, requests: list[shard_pb.ExchangeRequest]) -> list[shard_pb.ExchangeResponse]:
    """Sends the requests on one Exchange stream and reads until the shard ends it."""
    async with create_channel(address, PLAINTEXT) as channel:
        call = shard_grpc.ParameterShardStub(channel).Exchange()
        for request in requests:
            await call.write(request)
        await call.done_writing()
        return [reply async for reply in call]


def initial_slice(ctx: dict[str, Any]) -> list[common_pb.TensorChunk]:
    """Shard 0's slice of the model's initial parameters, as chunks (what a worker's `init` carries)."""
    shard_map: ShardMap = ctx["shard_map"]
    start, end = shard_map.ranges[0]
    return list(serde.slice_to_chunks(ctx["initial"][start:end], shard_map.segments(0), start))


def init_request(ctx: dict[str, Any], chunks: list[common_pb.TensorChunk]) -> shard_pb.ExchangeRequest:
    """An `init` (the shard's initial parameters) in one message, as worker/links.py sends it."""
    init = shard_pb.PushChunk(push_id="init", base_version=-1, membership_epoch=ctx["epoch"], chunks=chunks, last=True)
    return shard_pb.ExchangeRequest(init=init)


def open_request(ctx: dict[str, Any]) -> shard_pb.ExchangeRequest:
    fields = {"job_id": ctx["job_id"], "worker_id": ctx["worker_id"], "membership_epoch": ctx["epoch"]}
    return shard_pb.ExchangeRequest(open=shard_pb.ExchangeOpen(**fields))


async def as_assigned_worker(
    cluster: LocalCluster, spec: dict[str, Any], body: Callable[[dict[str, Any]], Any], initialize: bool = True
) -> Any:
    """Registers as a worker and submits `spec` (one worker); prepares the job as a worker does
    (worker/prepare.py: builds the model, reports its layout), waits for the assignment and,
    with `initialize`, gives the shard its initial slice as the first worker to reach it does.
    Runs `body` with what the assignment says (job_id, worker_id, epoch, shard, shard_map) and
    the model's flat initial parameters (initial); cancels the job."""
    security = cluster.client_security()
    session = MemberSession(cluster.coordinator_address, common_pb.ROLE_WORKER, security, name="test-worker")
    await session.register(10)
    received: asyncio.Queue[commands.Command] = asyncio.Queue()
    session_task = asyncio.create_task(session.run(received.put))
    async with create_channel(cluster.coordinator_address, security) as channel:
        stub = coord_grpc.CoordinatorStub(channel)
        job = (await stub.SubmitJob(coord_pb.SubmitJobRequest(spec_json=json.dumps(spec)), timeout=30)).job
        try:
            prepared = None
            while not isinstance(command := await asyncio.wait_for(received.get(), 30), commands.AssignWorker):
                if isinstance(command, commands.PrepareWorker):
                    prepared = prepare_job(job.job_id, command.job.spec, (0, 1), None)
                    await session.send(events.LayoutReport(job.job_id, prepared.layout))
            assert prepared is not None, "assigned before it was asked to prepare"
            assert command.job.shard_map is not None
            ctx = {
                "job_id": job.job_id,
                "worker_id": session.member_id,
                "epoch": command.job.membership_epoch,
                "shard": command.shard_addresses[0],
                "shard_map": command.job.shard_map,
                "initial": torch.cat([p.detach().reshape(-1) for p in prepared.model.parameters()]),
            }
            if initialize:
                await exchange(ctx["shard"], [open_request(ctx), init_request(ctx, initial_slice(ctx))])
            return await body(ctx)
        finally:
            await stub.CancelJob(coord_pb.CancelJobRequest(job_id=job.job_id), timeout=10)
            session_task.cancel()
            await session.close()
