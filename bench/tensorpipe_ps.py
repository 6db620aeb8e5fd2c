"""The parameter-server pattern of torch.distributed.rpc (TensorPipe), the alternative tidal's
async mode is compared with: rank 0 holds the parameters, trainers pull them and push a
gradient that the server applies (SGD) under a lock, as in PyTorch's parameter-server tutorial.

    python -m bench.tensorpipe_ps --rank R --world-size W --init-file F --numel N [--no-shm] [--threads T]

Rank 0 serves; every other rank warms up, prints READY, reads the measuring window from stdin
(bench.procs.open_window) and prints one JSON line (rounds completed inside the window).
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import torch
from torch.distributed import rpc

from bench.procs import read_window

LR = 1e-3
_state: dict[str, torch.Tensor] = {}
_lock = threading.Lock()


def _pull() -> torch.Tensor:
    return _state["params"]


def _push(grad: torch.Tensor) -> None:
    with _lock:
        _state["params"].add_(grad.to(torch.float32), alpha=-LR)


def train(numel: int, rank: int, wire: torch.dtype | None) -> dict[str, object]:
    grad = torch.randn(numel, generator=torch.Generator().manual_seed(rank)) * 1e-6
    params = torch.zeros(numel)
    for _ in range(2):  # warm-up, as tidal's drivers do
        params.copy_(rpc.rpc_sync("ps", _pull))
        rpc.rpc_sync("ps", _push, args=(grad if wire is None else grad.to(wire),))
    start, stop = read_window()
    while time.time() < start:
        time.sleep(0.001)
    times: list[float] = []
    done_at: list[float] = []
    while time.time() < stop:
        t0 = time.perf_counter()
        params.copy_(rpc.rpc_sync("ps", _pull))
        rpc.rpc_sync("ps", _push, args=(grad if wire is None else grad.to(wire),))
        times.append(time.perf_counter() - t0)
        done_at.append(time.time())
    return {"round_s": times, "rounds_in_window": sum(start <= t < stop for t in done_at)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tensorpipe_ps")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--init-file", required=True)
    parser.add_argument("--numel", type=int, required=True)
    parser.add_argument("--wire", choices=["none", "bf16"], default="none")
    parser.add_argument("--no-shm", action="store_true", help="TCP only: no shared-memory transport or channel")
    parser.add_argument("--threads", type=int, default=16, help="TensorPipe's worker threads (its default: 16)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # Between emulated hosts nothing may bypass the links: TCP (uv) only, tensors on the same
    # connection (basic), neither the shm transport nor the cma channel (reads another process's memory).
    no_shm = {"_transports": ["uv"], "_channels": ["basic"]} if args.no_shm else {}
    options = rpc.TensorPipeRpcBackendOptions(
        init_method=f"file://{args.init_file}", rpc_timeout=120, num_worker_threads=args.threads, **no_shm
    )
    name = "ps" if args.rank == 0 else f"trainer{args.rank}"
    if args.rank == 0:
        _state["params"] = torch.zeros(args.numel)
    rpc.init_rpc(name, rank=args.rank, world_size=args.world_size, rpc_backend_options=options)
    result = None
    if args.rank != 0:
        wire = torch.bfloat16 if args.wire == "bf16" else None
        result = train(args.numel, args.rank, wire)
    rpc.shutdown()  # waits for every rank
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
