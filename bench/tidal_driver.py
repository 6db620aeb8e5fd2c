"""A bench worker: registers with a real coordinator like `tidal worker` does, takes the job
it is assigned, and drives tidal's real data plane (`worker.links.ShardLink`, the code the
worker uses) with a fixed gradient and no computation, so only the data plane is timed.

Run as a subprocess by the cases (`python -m bench.tidal_driver ...`); prints one JSON line once it has measured, then
holds its session until the bench cancels the job.

Two ways to run: `--rounds N` (every driver does N rounds: sync barriers need equal counts),
or `--window` (after warm-up the driver prints READY and reads "START STOP" in unix seconds
from stdin; rounds completed inside that window are counted: async throughput with several
drivers, all starting together).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import time

import torch

from bench.procs import read_window
from tidal.core import commands
from tidal.core.compression import params_wire_dtype
from tidal.core.events import LayoutReport
from tidal.core.layout import Layout
from tidal.core.plan import job_layout
from tidal.transport.session import MemberSession
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.worker.convert import assignment_from_command
from tidal.worker.links import ShardLink

# A gradient small enough that SGD never drives the parameters anywhere odd.
GRAD_SCALE = 1e-6
# What every driver announces as the digest of its initial parameters (all zeros, see `drive`).
ZERO_PARAMETERS_DIGEST = hashlib.blake2b(b"tidal bench driver: zeros", digest_size=16).hexdigest()


class _Member:
    """The coordinator session: waits for an assignment, then for the job's release."""

    def __init__(self, coordinator: str, security: SecurityConfig) -> None:
        self.session = MemberSession(coordinator, common_pb.ROLE_WORKER, security, name="bench-driver")
        self.assigned: asyncio.Future[commands.AssignWorker] = asyncio.get_running_loop().create_future()
        self.released = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float) -> commands.AssignWorker:
        await self.session.register(timeout_s)
        self.task = asyncio.create_task(self.session.run(self._on_command))
        return await asyncio.wait_for(self.assigned, timeout_s)

    async def _on_command(self, command: commands.Command) -> None:
        match command:
            case commands.PrepareWorker():
                # The coordinator plans the job from the layout its workers announce. The driver
                # computes nothing: its parameters start at zero, the same in every driver.
                layout = Layout(job_layout(command.job.spec).tensors, ZERO_PARAMETERS_DIGEST)
                await self.session.send(LayoutReport(command.job.job_id, layout))
            case commands.AssignWorker() if not self.assigned.done():
                self.assigned.set_result(command)
            case commands.Release():
                self.released.set()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.session.close()


async def drive(args: argparse.Namespace, security: SecurityConfig) -> None:
    member = _Member(args.coordinator, security)
    assigned = await member.start(args.timeout)
    a = assignment_from_command(assigned)
    total = a.shard_map.total_elements
    params = torch.zeros(total)
    grads = torch.randn(total, generator=torch.Generator().manual_seed(a.rank)) * GRAD_SCALE
    wire = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.wire]
    upload_turns = asyncio.Lock()
    links = [
        ShardLink(
            a.job_id,
            a.worker_id,
            a.membership_epoch,
            i,
            addr,
            a.shard_map,
            params,
            a.spec.step_timeout_s,
            params_wire_dtype(a.spec.compression),
            security=security,
            shared_memory=args.transport == "shared_memory",
            bulk_channel=args.transport == "bulk",
            upload_turns=upload_turns,
        )
        for i, addr in enumerate(a.shard_addresses)
    ]
    await asyncio.gather(*(link.open() for link in links))
    if args.transport == "shared_memory" and not all(link.shared_memory for link in links):
        raise SystemExit("bench driver: a shard declined shared memory (TIDAL_SHARED_MEMORY=off there?)")
    if args.transport == "bulk" and not all(link.transport.startswith("on a bulk channel") for link in links):
        raise SystemExit("bench driver: a shard offered no bulk channel (TIDAL_BULK_CHANNEL=off there?)")
    await asyncio.gather(*(link.pull(0) for link in links))
    clock = 0

    async def one_round() -> None:
        nonlocal clock
        push_id = f"{a.worker_id}:{clock}"
        await asyncio.gather(*(link.push(push_id, clock, grads, 1, wire) for link in links))
        clock += 1

    for _ in range(args.warmup):
        await one_round()
    ready_at = time.time()
    times: list[float] = []
    done_at: list[float] = []
    if args.rounds:
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            await one_round()
            times.append(time.perf_counter() - t0)
    else:
        start, stop = await asyncio.get_running_loop().run_in_executor(None, read_window)
        # Every driver starts at the same wall-clock instant (the window file says when).
        await asyncio.sleep(max(0.0, start - time.time()))
        while time.time() < stop:
            t0 = time.perf_counter()
            await one_round()
            times.append(time.perf_counter() - t0)
            done_at.append(time.time())
        done_at = [t for t in done_at if start <= t < stop]
    result = {
        "rank": a.rank,
        "ready_at": ready_at,
        "params": total,
        "round_s": times,
        "rounds_in_window": len(done_at),
        "bytes_sent": sum(link.bytes_sent for link in links),
        "bytes_received": sum(link.bytes_received for link in links),
    }
    # Report, then hold the session until the bench cancels the job: a member that leaves
    # fails the job, which would cut the other drivers' last rounds short.
    print(json.dumps(result), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(member.released.wait(), args.timeout)
    await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
    await member.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tidal_driver")
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--window", action="store_true", help="count rounds in a window the bench sends on stdin")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--wire", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument(
        "--transport", choices=["grpc", "shared_memory", "bulk"], default="grpc",
        help="how tensors travel: inline in the gRPC messages, through /dev/shm (transport/shm.py), or on a "
        "bulk channel beside the stream (transport/bulk.py)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if not args.rounds and not args.window:
        parser.error("one of --rounds or --window is required")
    torch.set_num_threads(1)
    # As `tidal worker` does: the cluster's TLS and token where its environment names them
    # (the between-hosts case's mutual-TLS rows), else plaintext.
    asyncio.run(drive(args, SecurityConfig.from_env(os.environ, default_name="worker")))


if __name__ == "__main__":
    main()
