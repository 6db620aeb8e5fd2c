"""The Python client for a tidal coordinator (what the CLI and the demo use)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tidal.core.errors import InvalidArgumentError, TidalError
from tidal.core.spec import JobSpec
from tidal.transport.errors import error_from_rpc
from tidal.transport.server import create_channel
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

TERMINAL_STATES = (common_pb.JOB_STATE_SUCCEEDED, common_pb.JOB_STATE_FAILED, common_pb.JOB_STATE_CANCELLED)


def job_state_name(state: int) -> str:
    return common_pb.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def load_spec_file(path: Path, kind: str = "job spec") -> dict[str, Any]:
    """Reads a spec (a mapping) from a YAML or JSON file (YAML is a superset of JSON)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidArgumentError(f"{path}: cannot read {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{path}: a {kind} must be a mapping")
    return data


class TidalClient:
    """A coordinator's job API. TLS, client certificate and token come from `security`
    (transport/tls.py; the CLI builds it from TIDAL_TLS_*, TIDAL_TOKEN*)."""

    def __init__(self, address: str, security: SecurityConfig, timeout_s: float = 30.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = create_channel(address, security)
        self._stub = coord_grpc.CoordinatorStub(self._channel)

    async def __aenter__(self) -> TidalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _describe(exc, self.address) from None

    async def submit(self, spec: JobSpec | dict[str, Any]) -> coord_pb.JobStatus:
        """Submits a spec (a mapping as in a YAML file, or a JobSpec: the fields it was given)."""
        if isinstance(spec, JobSpec):
            spec = spec.model_dump(mode="json", exclude_unset=True)
        reply = await self._call(self._stub.SubmitJob, coord_pb.SubmitJobRequest(spec_json=json.dumps(spec)))
        return reply.job

    async def get(self, job_id: str) -> coord_pb.JobStatus:
        return (await self._call(self._stub.GetJob, coord_pb.GetJobRequest(job_id=job_id))).job

    async def list(self) -> list[coord_pb.JobStatus]:
        return list((await self._call(self._stub.ListJobs, coord_pb.ListJobsRequest())).jobs)

    async def cancel(self, job_id: str) -> coord_pb.JobStatus:
        return (await self._call(self._stub.CancelJob, coord_pb.CancelJobRequest(job_id=job_id))).job

    async def cluster(self) -> list[coord_pb.Member]:
        return list((await self._call(self._stub.GetCluster, coord_pb.GetClusterRequest())).members)

    async def watch(self, job_id: str) -> AsyncIterator[coord_pb.JobStatus]:
        """Yields the job's status on every change until it ends (no overall deadline)."""
        try:
            async for reply in self._stub.WatchJob(coord_pb.WatchJobRequest(job_id=job_id)):
                yield reply.job
        except grpc.aio.AioRpcError as exc:
            raise _describe(exc, self.address) from None

    async def wait(self, job_id: str) -> coord_pb.JobStatus:
        last = await self.get(job_id)
        async for status in self.watch(job_id):
            last = status
        return last


def _describe(exc: grpc.aio.AioRpcError, address: str) -> TidalError:
    err = error_from_rpc(exc)
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return type(err)(f"coordinator at {address} is unreachable: {exc.details()}")
    return err


async def check_health(address: str, security: SecurityConfig, service: str = "", timeout_s: float = 3.0) -> str:
    """Returns the grpc.health.v1 status name of `service` at `address` ("" = the server)."""
    async with create_channel(address, security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
