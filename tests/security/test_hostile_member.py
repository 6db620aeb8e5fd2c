"""A member with a valid credential attacks a live sync job on a mutual-TLS cluster.

Every worker of the cluster authenticates with the bundle's `worker` certificate, so the
attacker, holding that same certificate, may open Exchange streams as either real worker of
the job. While the job trains it sends every attack class of the exchange protocol: one
message of 100,000 chunks, a push of more messages than its slice needs, late pushes under a
victim's future push ids, a NaN gradient under a push id already used, reconnect counters out
of range, and a push cut short by a half-close. Each gets its precise answer; then the job
must succeed with final parameters bit for bit those of a clean run with the same seed, with
no member declared failed and no heartbeat missed.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import torch

from tests.integration.helpers import plan, run_async
from tidal.core.shard_map import ShardMap
from tidal.core.torch_dtypes import torch_dtype
from tidal.launcher import LocalCluster
from tidal.security.bundle import create_bundle, environment
from tidal.transport import serde
from tidal.transport.server import create_channel
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc
from tidal.v1 import shard_pb2 as shard_pb
from tidal.v1 import shard_pb2_grpc as shard_grpc

pytestmark = pytest.mark.integration

# Two workers: a sync shard sums their gradients in arrival order, and with two the sum is
# the same either way, so runs with the same seed agree bit for bit.
SPEC: dict[str, Any] = {
    "name": "hostile",
    "mode": "sync",
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "num_workers": 2,
    "num_shards": 1,
    "steps": 200,
    "seed": 11,
    # Both ranks take at least 0.1 s a step, so the job trains for 20 s or more: the attack
    # rounds below finish well inside it, and the delay does not change the arithmetic.
    "stragglers": [
        {"rank": 0, "delay": {"distribution": "constant", "mean_s": 0.1}},
        {"rank": 1, "delay": {"distribution": "constant", "mean_s": 0.1}},
    ],
}
ATTACK_ROUNDS = 2
# A gradient this large would move every parameter visibly if any forged push were applied.
FORGED_FILL = 1000.0
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Cluster:
    cluster: LocalCluster
    pki: Path

    def config(self, cert: str, token: str = "") -> SecurityConfig:
        return SecurityConfig(
            ca_path=self.pki / "ca.crt",
            cert_path=self.pki / f"{cert}.crt",
            key_path=self.pki / f"{cert}.key",
            token=token,
        )

    @property
    def admin(self) -> SecurityConfig:
        return self.config("admin")

    @property
    def attacker(self) -> SecurityConfig:
        return self.config("worker")


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("hostile")
    pki = workdir / "pki"
    create_bundle(pki)
    with LocalCluster(workdir, num_shards=1, worker_slowdowns=(1.0, 1.0), env=environment(pki)) as cluster:
        yield Cluster(cluster, pki)


# --- the job and what the shard holds -------------------------------------------------------
async def _submit(s: Cluster) -> str:
    async with create_channel(s.cluster.coordinator_address, s.admin) as channel:
        stub = coord_grpc.CoordinatorStub(channel)
        reply = await stub.SubmitJob(coord_pb.SubmitJobRequest(spec_json=json.dumps(SPEC)), timeout=60)
        return reply.job.job_id


async def _job(s: Cluster, job_id: str) -> coord_pb.JobStatus:
    async with create_channel(s.cluster.coordinator_address, s.admin) as channel:
        return (await coord_grpc.CoordinatorStub(channel).GetJob(coord_pb.GetJobRequest(job_id=job_id), timeout=10)).job


async def _until_done(s: Cluster, job_id: str) -> coord_pb.JobStatus:
    async with create_channel(s.cluster.coordinator_address, s.admin) as channel:
        last = None
        stub = coord_grpc.CoordinatorStub(channel)
        async for reply in stub.WatchJob(coord_pb.WatchJobRequest(job_id=job_id), timeout=240):
            last = reply.job
        assert last is not None
        return last


async def _members(s: Cluster) -> list[coord_pb.Member]:
    async with create_channel(s.cluster.coordinator_address, s.admin) as channel:
        stub = coord_grpc.CoordinatorStub(channel)
        return list((await stub.GetCluster(coord_pb.GetClusterRequest(), timeout=10)).members)


async def _final_parameters(s: Cluster, job_id: str, shard_map: ShardMap) -> torch.Tensor:
    flat = torch.empty(shard_map.total_elements, dtype=torch_dtype(shard_map.dtype))
    start, end = shard_map.ranges[0]
    assembler = serde.SliceAssembler(shard_map.segments(0), start, flat[start:end], "params")
    async with create_channel(s.cluster.address_of("shard-0"), s.admin) as channel:
        stub = shard_grpc.ParameterShardStub(channel)
        async for reply in stub.ReadParameters(shard_pb.ReadParametersRequest(job_id=job_id), timeout=30):
            assembler.add(reply.params.chunks)
    assembler.finish()
    return flat


def _metric_total(s: Cluster, service: str, name: str) -> float:
    context = ssl.create_default_context(cafile=str(s.pki / "ca.crt"))
    context.load_cert_chain(str(s.pki / "admin.crt"), str(s.pki / "admin.key"))
    text = httpx.get(s.cluster.metrics_url(service), verify=context, timeout=10).text
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.MULTILINE)
    assert values, f"{name} not on {service}'s /metrics"
    return sum(float(v) for v in values)


# --- the attacks ------------------------------------------------------------------------------
@dataclass
class Target:
    job_id: str
    epoch: int
    victim: str
    shard_map: ShardMap


def _open(t: Target, **overrides: Any) -> shard_pb.ExchangeRequest:
    fields = {"job_id": t.job_id, "worker_id": t.victim, "membership_epoch": t.epoch, **overrides}
    return shard_pb.ExchangeRequest(open=shard_pb.ExchangeOpen(**fields))


def _gradient(t: Target, fill: float) -> list[common_pb.TensorChunk]:
    grad = torch.full((t.shard_map.total_elements,), fill)
    return list(serde.slice_to_chunks(grad, t.shard_map.segments(0), 0))


def _push(t: Target, push_id: str, chunks: list[common_pb.TensorChunk], last: bool = True) -> shard_pb.ExchangeRequest:
    push = shard_pb.PushChunk(
        push_id=push_id, base_version=0, membership_epoch=t.epoch, clock=0, num_samples=32, chunks=chunks, last=last
    )
    return shard_pb.ExchangeRequest(push=push)


def _tiny_chunks(t: Target, count: int) -> list[common_pb.TensorChunk]:
    """`count` one-element chunks of the slice's first tensor, each valid on its own."""
    first = t.shard_map.segments(0)[0]
    chunk = common_pb.TensorChunk(
        name=first.name, shape=first.shape, dtype=common_pb.DTYPE_FLOAT32, offset=0, data=b"\0\0\0\0"
    )
    return [chunk] * count


async def _send(s: Cluster, requests: list[shard_pb.ExchangeRequest]) -> tuple[grpc.StatusCode, str, list[Any]]:
    """One Exchange stream as the attacker: writes the requests, half-closes, reads to the end."""
    async with create_channel(s.cluster.address_of("shard-0"), s.attacker) as channel:
        call = shard_grpc.ParameterShardStub(channel).Exchange(timeout=60)
        replies: list[Any] = []
        try:
            for request in requests:
                await call.write(request)
            await call.done_writing()
            replies = [reply async for reply in call]
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", replies
        code = await call.code()
        return code, await call.details() or "", replies


async def _attack_round(s: Cluster, t: Target, version: int) -> dict[str, tuple[grpc.StatusCode, str, list[str]]]:
    """Each attack class once against `t.victim`; the shard is at `version` or later."""
    windows = len(_gradient(t, 0.0))
    future_ids = [f"{t.victim}:{step}" for step in range(version + 1, version + 6)]
    attacks = {
        "one message of 100,000 chunks": [_open(t), _push(t, f"{t.victim}:big", _tiny_chunks(t, 100_000))],
        "a push of more messages than its slice needs": [
            _open(t),
            *[_push(t, f"{t.victim}:many", _tiny_chunks(t, 1), last=False) for _ in range(2 * windows + 1)],
        ],
        "late pushes under the victim's future push ids": [
            _open(t),
            *[_push(t, push_id, _gradient(t, FORGED_FILL)) for push_id in future_ids],
        ],
        "NaN under a push id already used": [_open(t), _push(t, f"{t.victim}:0", _gradient(t, float("nan")))],
        "reconnect counters out of range": [_open(t, completed_pushes=10**15, last_version=version)],
        "a push cut short by a half-close": [_open(t), _push(t, f"{t.victim}:cut", _gradient(t, 1.0), last=False)],
    }
    out = {}
    for name, requests in attacks.items():
        code, details, replies = await _send(s, requests)
        outcomes = [shard_pb.PushOutcome.Name(r.ack.outcome) for r in replies if r.WhichOneof("kind") == "ack"]
        out[name] = (code, details, outcomes)
    return out


EXPECTED = {
    "one message of 100,000 chunks": (INVALID, "chunks"),
    "a push of more messages than its slice needs": (INVALID, "chunks"),
    "NaN under a push id already used": (INVALID, "NaN"),
    "reconnect counters out of range": (INVALID, "open.completed_pushes"),
    "a push cut short by a half-close": (INVALID, "ended inside push"),
}
# What a forged push may be told: late, or, where the victim already made that push by the
# time it arrived, a duplicate. Never APPLIED or BUFFERED.
NOT_TAKEN = {"PUSH_OUTCOME_DROPPED_LATE", "PUSH_OUTCOME_REJECTED_STALE", "PUSH_OUTCOME_DUPLICATE"}


def test_a_valid_member_cannot_change_stall_or_hang_a_sync_job(secure: Cluster) -> None:
    _, _, shard_map = plan(SPEC)

    async def clean() -> tuple[coord_pb.JobStatus, torch.Tensor]:
        job_id = await _submit(secure)
        final = await _until_done(secure, job_id)
        return final, await _final_parameters(secure, job_id, shard_map)

    async def attacked() -> tuple[coord_pb.JobStatus, int, list[dict[str, Any]], torch.Tensor]:
        job_id = await _submit(secure)
        while (job := await _job(secure, job_id)).version < 3:
            assert job.state in (common_pb.JOB_STATE_PENDING, common_pb.JOB_STATE_RUNNING), job.message
        members = await _members(secure)
        workers = sorted(m.member_id for m in members if m.role == common_pb.ROLE_WORKER and m.job_id == job_id)
        assert len(workers) == 2, workers
        rounds = []
        for i in range(ATTACK_ROUNDS):
            job = await _job(secure, job_id)
            target = Target(job_id, job.membership_epoch, workers[i % 2], shard_map)
            rounds.append(await _attack_round(secure, target, job.version))
        epoch_during = (await _job(secure, job_id)).membership_epoch
        final = await _until_done(secure, job_id)
        assert final.membership_epoch == epoch_during, "the job's membership changed: a member was lost"
        return final, epoch_during, rounds, await _final_parameters(secure, job_id, shard_map)

    clean_final, clean_params = run_async(clean(), 300)
    assert clean_final.state == common_pb.JOB_STATE_SUCCEEDED, clean_final.message
    final, _, rounds, params = run_async(attacked(), 300)

    for answers in rounds:
        for name, (code, needle) in EXPECTED.items():
            got_code, details, _ = answers[name]
            assert got_code == code and needle in details, (name, got_code, details)
        code, details, outcomes = answers["late pushes under the victim's future push ids"]
        # The stream itself is fine; no forged push is taken.
        assert code == grpc.StatusCode.OK, details
        assert len(outcomes) == 5 and set(outcomes) <= NOT_TAKEN, outcomes
    assert final.state == common_pb.JOB_STATE_SUCCEEDED, final.message
    assert final.version == clean_final.version == SPEC["steps"]
    assert final.updates_rejected >= 5 * ATTACK_ROUNDS > clean_final.updates_rejected
    assert torch.equal(params.view(torch.int32), clean_params.view(torch.int32)), "parameters differ from the clean run"
    # Nobody was declared failed, and no heartbeat was missed, anywhere in either run.
    assert _metric_total(secure, "coordinator", "tidal_coordinator_missed_heartbeats_total") == 0
    assert _metric_total(secure, "coordinator", "tidal_coordinator_member_failures_total") == 0
    states = {m.member_id: m.state for m in run_async(_members(secure))}
    assert set(states.values()) == {common_pb.MEMBER_STATE_IDLE}, states
