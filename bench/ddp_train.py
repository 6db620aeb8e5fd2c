"""The alternative tidal's time to a target loss is compared with: the same job trained with
`torch.nn.parallel.DistributedDataParallel` over gloo, one process per worker.

Same model and initial parameters (`job_model`, from the seed), same data partition and
batches per rank (`job_partition`, `batch_indices`: what tidal's workers draw), same
optimizer (`build_optimizer`) stepping on the gradient averaged over the ranks (what tidal's
sync mode applies on the shard). Rank 0 evaluates on the validation split every
`--eval-every` steps, as tidal's first worker does every `eval_every` versions.

    python -m bench.ddp_train --rank R --world-size W --init-file F --spec JSON --target LOSS --max-steps N

Rank 0 prints one JSON line: seconds from the process group's start (before the data set and
the model are built, as a tidal job's clock starts when its workers are assigned) to the first
evaluation at or below the target, the steps it took, and the mean step time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tidal.core.optim import build_optimizer
from tidal.core.plan import job_dataset, job_model, job_partition
from tidal.core.sources.batches import TrainBatches, eval_batches
from tidal.core.spec import parse_job_spec
from tidal.core.training import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ddp_train")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--init-file", required=True)
    parser.add_argument("--spec", required=True, help="the tidal job spec, JSON")
    parser.add_argument("--target", type=float, required=True, help="validation loss to reach")
    parser.add_argument("--max-steps", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = parse_job_spec(args.spec)
    # DistributedDataParallel imports torch._dynamo when it is first built (~800 modules, 4 s or
    # more on this machine): process start-up, which tidal's long-lived workers have behind them
    # too, so it happens before the clock starts.
    importlib.import_module("torch._dynamo")
    dist.init_process_group("gloo", init_method=f"file://{args.init_file}", rank=args.rank, world_size=args.world_size)
    dist.barrier()
    started = time.perf_counter()
    data = job_dataset(spec, args.rank, args.world_size, model_modules=None)  # the bench's own specs
    model = DistributedDataParallel(job_model(spec, data))
    optimizer = build_optimizer(spec.optimizer, list(model.parameters()))
    batches = TrainBatches(
        data, job_partition(spec, data, args.rank, args.world_size), spec.batch_size, spec.seed, args.rank
    )
    reached: dict[str, float] | None = None
    step = 0
    first_step = 0.0
    stop = torch.zeros(1)
    while step < args.max_steps:
        if step == 0:
            first_step = time.perf_counter()
        x, y = batches(step)
        optimizer.zero_grad(set_to_none=False)
        model.train()
        loss = data.objective.loss(model(x), y)
        loss.backward()  # DDP averages the gradient over the ranks here
        optimizer.step()
        step += 1
        if step % spec.eval_every == 0:
            if args.rank == 0:
                result = evaluate(model.module, eval_batches(data), objective=data.objective)
                if result.loss <= args.target:
                    reached = {"target_s": time.perf_counter() - started, "steps": step, "val_loss": result.loss}
                    stop.fill_(1.0)
            dist.broadcast(stop, 0)
            if stop.item():
                break
    step_s = (time.perf_counter() - first_step) / max(step, 1)
    dist.barrier()
    if args.rank == 0:
        print(json.dumps({"reached": reached, "step_s": step_s, "steps": step}), flush=True)
    else:
        print(json.dumps({}), flush=True)
    # Not a normal interpreter exit: once one rank has gone, the other's exit could wait for
    # gloo's background thread for good (seen once in a full run). The result is out.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
