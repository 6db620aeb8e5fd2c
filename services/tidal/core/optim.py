"""Builds the torch.optim optimizer a shard runs on its parameter slice."""

from __future__ import annotations

import torch

from tidal.core.spec import JobSpec, Mode, OptimizerSpec


def build_optimizer(spec: OptimizerSpec, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    # All four are elementwise, so running them on a flat slice gives the same result as
    # running them on the model's tensors.
    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay
        )
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)
    return torch.optim.Adagrad(params, lr=spec.lr, eps=spec.eps, weight_decay=spec.weight_decay)


def build_shard_optimizer(spec: JobSpec, params: torch.Tensor) -> torch.optim.Optimizer:
    """What a shard runs: the job's optimizer, or in local_sgd mode the outer optimizer
    (DiLoCo: SGD with Nesterov momentum on the averaged pseudo-gradient)."""
    if spec.mode == Mode.LOCAL_SGD:
        c = spec.consistency
        return torch.optim.SGD(
            [params], lr=c.outer_lr, momentum=c.outer_momentum, nesterov=c.outer_nesterov and c.outer_momentum > 0
        )
    return build_optimizer(spec.optimizer, [params])
