"""The collective tidal's sync step is compared with: gloo `all_reduce` of the same gradient
(what DistributedDataParallel does per step on CPU), over loopback.

    python -m bench.gloo_allreduce --rank R --world-size W --init-file F --numel N --rounds K

Every rank prints one JSON line with its per-round times.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gloo_allreduce")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--init-file", required=True)
    parser.add_argument("--numel", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.init_file}", rank=args.rank, world_size=args.world_size)
    grad = torch.randn(args.numel, generator=torch.Generator().manual_seed(args.rank))
    times = []
    for i in range(args.warmup + args.rounds):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(grad)
        grad.div_(args.world_size)  # DDP averages
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    dist.destroy_process_group()
    print(json.dumps({"round_s": times}), flush=True)


if __name__ == "__main__":
    main()
