"""Builds the torch.optim optimizer a shard runs on its parameter slice."""

from __future__ import annotations

import torch

from tidal.core import eager_optim
from tidal.core.spec import JobSpec, Mode, OptimizerSpec

# Implementation switches of torch.optim: how a step is computed, not what it computes. A
# checkpoint written under other switches restores (core/shard_snapshot.py ignores them).
IMPLEMENTATION_OPTIONS = frozenset({"foreach", "fused", "capturable", "differentiable"})


def build_optimizer(spec: OptimizerSpec, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    # Built and stepped without torch.compile's wrappers (core/eager_optim.py): they import
    # torch._dynamo, ~75 MB resident, in processes that never compile.
    # All four are elementwise, so running them on a flat slice gives the same result as
    # running them on the model's tensors. Fused: one pass over the slice per step and no
    # temporaries; on one CPU thread (a shard's) Adam's step on 10M floats takes ~10 ms
    # instead of ~200 ms with the default per-tensor implementation, SGD's about half.
    if spec.name == "sgd":
        return eager_optim.build(
            torch.optim.SGD, params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
            weight_decay=spec.weight_decay, fused=True,
        )  # fmt: skip
    if spec.name == "adam":
        return eager_optim.build(
            torch.optim.Adam, params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
            fused=True,
        )  # fmt: skip
    if spec.name == "adamw":
        return eager_optim.build(
            torch.optim.AdamW, params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
            fused=True,
        )  # fmt: skip
    return eager_optim.build(
        torch.optim.Adagrad, params, lr=spec.lr, eps=spec.eps, weight_decay=spec.weight_decay, fused=True
    )


def build_shard_optimizer(spec: JobSpec, params: torch.Tensor) -> torch.optim.Optimizer:
    """What a shard runs: the job's optimizer, or in local_sgd mode the outer optimizer
    (DiLoCo: SGD with Nesterov momentum on the averaged pseudo-gradient)."""
    if spec.mode == Mode.LOCAL_SGD:
        c = spec.consistency
        return eager_optim.build(
            torch.optim.SGD, [params], lr=c.outer_lr, momentum=c.outer_momentum,
            nesterov=c.outer_nesterov and c.outer_momentum > 0, fused=True,
        )  # fmt: skip
    return build_optimizer(spec.optimizer, [params])
