"""Row-wise optimizers: each pushed row is updated from its own gradient and state alone.

A row no gradient touched keeps its values and state (lazy updates, as torch's sparse
optimizers do). Step counts are per row: Adam's bias correction for a row counts the pushes
that reached that row, not the table's steps, so a rare id is not under-corrected. The
formulas are torch's: SGD; Adagrad with lr_decay 0 (torch.optim.Adagrad, sparse or dense);
SparseAdam's (torch.optim.SparseAdam), whose step count equals ours for a row pushed every
step (tests/unit/test_embedding_optim.py holds them to torch).
"""

from __future__ import annotations

import torch

from tidal.core.embeddings.spec import RowOptimizerSpec

# Per-row state tensors of each optimizer, each as wide as a row.
STATE_NAMES: dict[str, tuple[str, ...]] = {"sgd": (), "adagrad": ("sum",), "adam": ("exp_avg", "exp_avg_sq")}


def initial_state(spec: RowOptimizerSpec, rows: int, dim: int) -> dict[str, torch.Tensor]:
    """The state of `rows` new rows."""
    fill = spec.initial_accumulator_value if spec.name == "adagrad" else 0.0
    return {name: torch.full((rows, dim), fill, dtype=torch.float32) for name in STATE_NAMES[spec.name]}


def step_rows(
    spec: RowOptimizerSpec,
    values: torch.Tensor,
    grads: torch.Tensor,
    state: dict[str, torch.Tensor],
    steps: torch.Tensor,
) -> None:
    """Updates `values` and `state` (rows gathered from a table, changed in place) from `grads`;
    `steps` (int64, one per row) counts this step already (1 for a row's first update)."""
    if spec.name == "sgd":
        values.add_(grads, alpha=-spec.lr)
    elif spec.name == "adagrad":
        total = state["sum"]
        total.addcmul_(grads, grads, value=1.0)
        values.addcdiv_(grads, total.sqrt().add_(spec.eps), value=-spec.lr)
    elif spec.name == "adam":
        beta1, beta2 = spec.betas
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.add_(grads.sub(exp_avg).mul_(1 - beta1))
        exp_avg_sq.add_(grads.pow(2).sub_(exp_avg_sq).mul_(1 - beta2))
        t = steps.to(torch.float64)
        step_size = spec.lr * torch.sqrt(1 - beta2**t) / (1 - beta1**t)
        update = exp_avg / exp_avg_sq.sqrt().add_(spec.eps)
        values.sub_(update.mul_(step_size.to(torch.float32).unsqueeze(1)))
    else:  # the spec allows no other name
        raise ValueError(f"optimizer.name: unknown row optimizer {spec.name!r}")
