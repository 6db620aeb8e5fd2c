"""Simulated cluster members for the control-plane case: N lightweight asyncio clients in one
process, each with its own connection, registering with a real coordinator, holding a
Session stream and heartbeating at the interval the coordinator asks for.

The Session protocol does not answer heartbeats, so each member times a heartbeat followed
by a grpc.health.v1 Check on the same connection: the write, plus one round trip through the
coordinator's event loop, which is what delays heartbeat handling when the coordinator is busy.

    python -m bench.members --coordinator A --members N --window START STOP
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tidal.transport.server import CHANNEL_OPTIONS
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc

# A connection per member, as separate processes would have (grpc shares one by default).
_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]


async def _member(i: int, address: str, window: tuple[float, float], ready: asyncio.Semaphore) -> list[float]:
    start, stop = window
    async with grpc.aio.insecure_channel(address, options=_OPTIONS) as channel:
        stub = coord_grpc.CoordinatorStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        async with ready:  # register a few at a time, as a cluster coming up would
            request = coord_pb.RegisterRequest(role=common_pb.ROLE_WORKER, name=f"sim-{i}")
            # wait_for_ready: a connection attempt that fails under load is retried, not fatal.
            reply = await stub.Register(request, timeout=120, wait_for_ready=True)
        call = stub.Session()
        await call.write(coord_pb.SessionRequest(open=coord_pb.SessionOpen(member_id=reply.member_id)))

        async def drain() -> None:
            while await call.read() is not grpc.aio.EOF:
                pass

        reader = asyncio.create_task(drain())
        interval = reply.heartbeat_interval_s
        await asyncio.sleep(random.uniform(0, interval))  # members are not in lockstep
        rtts: list[float] = []
        seq = 0
        while (now := time.time()) < stop:
            t0 = time.perf_counter()
            seq += 1
            await call.write(coord_pb.SessionRequest(heartbeat=coord_pb.Heartbeat(seq=seq)))
            await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
            if now >= start:
                rtts.append(time.perf_counter() - t0)
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t0)))
        await call.done_writing()
        reader.cancel()
        call.cancel()
        return rtts


async def simulate(address: str, members: int, window: tuple[float, float]) -> dict[str, object]:
    ready = asyncio.Semaphore(16)
    cpu0 = time.process_time()
    results = await asyncio.gather(
        *(_member(i, address, window, ready) for i in range(members)), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    return {
        "rtt_s": [x for r in results if not isinstance(r, BaseException) for x in r],
        "client_cpu_s": time.process_time() - cpu0,
        # Members whose connection or session broke; reported, never hidden.
        "failed": len(failed),
        "first_failure": repr(failed[0])[:300] if failed else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.members")
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--window", type=float, nargs=2, required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(simulate(args.coordinator, args.members, tuple(args.window)))), flush=True)


if __name__ == "__main__":
    main()
