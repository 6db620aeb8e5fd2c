"""The end-to-end baseline: the same job trained in one process, no parameter server, with
tidal's own model, data and optimizer code, so only distribution differs.

    python -m bench.single_process SPEC_JSON STEPS   -> one JSON line: samples/s
"""

from __future__ import annotations

import json
import sys
import time

import torch

from tidal.core.flat import FlatModel
from tidal.core.optim import build_optimizer
from tidal.core.plan import job_dataset, job_model, job_partition
from tidal.core.sources.batches import TrainBatches
from tidal.core.spec import parse_job_spec
from tidal.core.training import compute_gradient

WARMUP_STEPS = 10


def main() -> None:
    torch.set_num_threads(1)
    spec = parse_job_spec(sys.argv[1])
    steps = int(sys.argv[2])
    data = job_dataset(spec, model_modules=None)  # the bench's own specs
    flat = FlatModel(job_model(spec, data))
    optimizer = build_optimizer(spec.optimizer, [flat.params])
    batches = TrainBatches(data, job_partition(spec, data, 0, 1), spec.batch_size, spec.seed, 0)
    started = 0.0
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            started = time.perf_counter()
        x, y = batches(step)
        loss = compute_gradient(flat, x, y, data.objective)
        flat.params.grad = flat.grads
        optimizer.step()
        flat.params.grad = None
    elapsed = time.perf_counter() - started
    print(json.dumps({"samples_per_s": steps * spec.batch_size / elapsed, "loss": loss}), flush=True)


if __name__ == "__main__":
    main()
