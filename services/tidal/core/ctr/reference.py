"""Single-process reference for sparse training: ``ctr_mlp`` with its tables in this process
(`tidal.nn.LocalRows`, plain row-wise SGD) and its dense network under torch's SGD or Adam.

Batches are the ones a single worker of one would train on (tidal's partition of the training
split and its seeded batch order), and the evaluation is the workers' own (`core/training.py`),
so a distributed run can be judged against this, and this against the planted model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tidal.core.datasets import partition_indices
from tidal.core.models import build_model
from tidal.core.sources.batches import TrainBatches, eval_batches
from tidal.core.sources.registry import load_job_data
from tidal.core.training import EvalResult, evaluate
from tidal.nn import LocalRows, bind_rows, row_gradients

__all__ = ["ReferenceRun", "train_reference"]


@dataclass(frozen=True)
class ReferenceRun:
    """Validation results before training, after it, and the training losses per step."""

    initial: EvalResult
    final: EvalResult
    losses: list[float]
    val: Any  # the validation split (``ctr_synthetic``'s carries ``planted``)


def train_reference(
    *,
    dataset: str,
    data_args: Mapping[str, Any],
    model_args: Mapping[str, Any],
    table_rows: Mapping[str, int],
    seed: int,
    steps: int,
    batch_size: int,
    row_lr: float,
    dense_lr: float,
    dense_optimizer: str = "adam",
) -> ReferenceRun:
    """Trains ``ctr_mlp`` (``model_args``; sharded tables of ``table_rows`` rows) on ``dataset``
    for ``steps`` batches: each step a forward and backward, then the dense optimizer's step and
    one SGD step on the rows the batch read."""
    data = load_job_data(dataset, data_args, seed, model_modules=None)
    model = build_model("ctr_mlp", model_args, data.input_shape, data.num_classes, seed)
    dims = bind_rows(model, None)
    rows = LocalRows({t: (table_rows[t], d) for t, d in dims.items()}, lr=row_lr, seed=seed)
    bind_rows(model, rows)
    dense: torch.optim.Optimizer = (
        torch.optim.Adam(model.parameters(), lr=dense_lr)
        if dense_optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=dense_lr)
    )
    objective = data.objective
    batches = TrainBatches(data, partition_indices(len(data.train), 0, 1, seed), batch_size, seed, 0)
    initial = evaluate(model, eval_batches(data), objective)
    losses = []
    for step in range(steps):
        x, y = batches(step)
        model.train()
        loss = objective.loss(model(x), y)
        dense.zero_grad()
        loss.backward()
        dense.step()
        rows.apply(row_gradients(model))
        losses.append(float(loss.detach()))
    return ReferenceRun(initial, evaluate(model, eval_batches(data), objective), losses, data.val)
