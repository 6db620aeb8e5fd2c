"""An optimizer step over part of a shard's slice, so a sync step can be applied range by range.

A pipelined sync step (core/range_barrier.py) applies each range of the slice as soon as every
worker's gradient for it arrived, and sends that range's parameters down while the rest still
comes up. tidal's shard optimizers (SGD, Adam, AdamW, Adagrad: core/optim.py) are elementwise,
so a step over elements [lo, hi) is the whole step restricted to them: this module runs the
optimizer's own step on a view of the range, with a view of each per-element state tensor
(momentum, moments, sums) and a private copy of each scalar one (Adam's step count). The
scalars are written back once per version (`finish_version`), so every range of a version
sees the same count. Ranges that start on a multiple of `ALIGN` elements give the whole step's
result bit for bit (the vectorized kernels then split the work alike); others may differ in
the last bit (tests/unit/test_range_step.py).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from tidal.core import eager_optim

# Range boundaries on multiples of this many elements keep the ranged step bitwise equal to
# the whole one (256 bytes of float32: every vector width the CPU kernels use divides it).
ALIGN = 64


class RangeStepper:
    """Steps `optimizer` (one parameter group over the flat `param`) on ranges of `param`."""

    def __init__(self, optimizer: torch.optim.Optimizer, param: torch.Tensor) -> None:
        if len(optimizer.param_groups) != 1 or len(optimizer.param_groups[0]["params"]) != 1:
            raise ValueError("a ranged step needs one parameter group over one flat tensor")
        self._optimizer = optimizer
        self._param = param
        # Scalar state (a step count) as the version's ranges advance it, written back at the end.
        self._scalars: dict[str, torch.Tensor] = {}

    def ready(self) -> bool:
        """True when every per-element state tensor exists: before the optimizer's first step
        some are created lazily from the first gradient, which a range cannot do for the rest."""
        state = self._optimizer.state.get(self._param)
        return bool(state) or not _keeps_state(self._optimizer)

    def step(self, lo: int, hi: int, grad: torch.Tensor) -> None:
        """Elements [lo, hi) of the parameter take the optimizer's step with `grad` (their
        gradient, hi - lo elements), at the learning rate the group holds now."""
        optimizer, param = self._optimizer, self._param
        view = param.detach()[lo:hi]
        full = optimizer.state[param]
        sub: dict[str, Any] = {}
        for key, value in full.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                sub[key] = value[lo:hi]
            elif torch.is_tensor(value):
                # Each range starts from the version's count, not from the previous range's.
                sub[key] = value.clone()
            else:
                sub[key] = value
        group = optimizer.param_groups[0]
        params, state = group["params"], optimizer.state
        group["params"] = [view]
        optimizer.state = defaultdict(dict, {view: sub})
        view.grad = grad
        try:
            eager_optim.step(optimizer)
        finally:
            view.grad = None
            group["params"], optimizer.state = params, state
        for key, value in sub.items():
            if torch.is_tensor(value) and value.dim() == 0:
                self._scalars[key] = value

    def finish_version(self) -> None:
        """Every range of the version took its step: the scalar state advances once."""
        state = self._optimizer.state[self._param]
        for key, value in self._scalars.items():
            state[key] = value
        self._scalars.clear()


def _keeps_state(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer creates per-parameter state on its first step (SGD only with momentum)."""
    if isinstance(optimizer, torch.optim.SGD):
        return optimizer.param_groups[0]["momentum"] != 0
    return True
