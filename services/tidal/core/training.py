"""What a worker computes: one gradient on a batch, and an evaluation pass.

Shared by the worker loop and by the tests' single-process reference, so "the same
computation" is literally the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from tidal.core import eager_optim
from tidal.core.auc import binary_auc
from tidal.core.flat import FlatModel
from tidal.core.objectives import CROSS_ENTROPY, Metric, Objective
from tidal.core.precision import MixedPrecision


@dataclass(frozen=True)
class EvalResult:
    loss: float
    # The value of the objective's metric (`metric` names it: accuracy, skill, rmse, ...).
    accuracy: float
    metric: Metric = CROSS_ENTROPY.metric


def compute_gradient(
    flat: FlatModel,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: Objective = CROSS_ENTROPY,
    precision: MixedPrecision | None = None,
) -> float:
    """Leaves the gradient of the batch's mean loss (the data set's objective: cross-entropy
    unless it says otherwise) in `flat.grads`; returns the loss. Under fp16, a gradient that
    overflowed is left as zeros (see core/precision.py)."""
    flat.to_device()
    x, y = flat.on_device(x), flat.on_device(y)
    flat.zero_grad()
    flat.model.train()
    if precision is None:
        loss = objective.loss(flat.model(x), y)
        loss.backward()
        flat.grads_to_host()
        return float(loss.detach())
    with precision.autocast():
        out = flat.model(x)
    # The loss in float32, outside autocast: a low-precision output is only cast up.
    loss = objective.loss(out.float(), y)
    finite = precision.backward(loss, flat.device_grads)
    flat.grads_to_host()
    if not finite:
        flat.grads.zero_()
    return float(loss.detach())


def tensor_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of tensors in memory, for `evaluate`."""
    for lo in range(0, len(y), batch_size):
        yield x[lo : lo + batch_size], y[lo : lo + batch_size]


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], objective: Objective = CROSS_ENTROPY
) -> EvalResult:
    """Mean loss and the objective's metric over every sample of ``batches`` (e.g. accuracy;
    for weighted MSE: skill against the reference forecast), in float32 on the model's device.
    Batches come from any validation split (core/sources/batches.py `eval_batches`) or from
    tensors (`tensor_batches`)."""
    model.eval()
    device = _device_of(model)
    total_loss, correct, count = 0.0, 0.0, 0
    # A ranking metric (AUC) needs every output at once: one float per entry, kept on the CPU.
    outputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for x, y in batches:
        out, target = model(x.to(device)), y.to(device)
        total_loss += float(objective.sum_loss(out, target))
        correct += objective.score(out, target)
        count += len(target)
        if objective.ranks_outputs:
            outputs.append(out.detach().float().reshape(-1).cpu())
            targets.append(target.detach().float().reshape(-1).cpu())
    n = max(count, 1)
    if objective.ranks_outputs:
        value = binary_auc(torch.cat(outputs), torch.cat(targets)) if outputs else 0.5
        return EvalResult(total_loss / n, value, objective.metric)
    return EvalResult(total_loss / n, objective.accuracy(correct, total_loss / n, count), objective.metric)


def warm_up() -> None:
    """Runs one tiny forward, backward and optimizer step so torch's lazy initialisation
    happens at service start, not inside the first job's timings."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    flat = FlatModel(model)
    compute_gradient(flat, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    # As shards and local-SGD workers step (core/eager_optim.py): no torch._dynamo import.
    eager_optim.step(eager_optim.build(torch.optim.SGD, [flat.params], lr=0.0))
    evaluate(model, tensor_batches(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)))
