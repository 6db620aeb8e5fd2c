"""The forward pass's precision on a worker: float32, or autocast to bf16 or fp16.

fp16 scales the loss (torch.amp.GradScaler) so small gradients survive the half-precision
backward pass. The shards run the optimizer, so the worker unscales the gradients itself before
they are pushed; when they are not finite (the scale was too high) it pushes zeros for that step
instead, which the shards apply as an empty update (it keeps sync barriers complete; with
momentum or weight decay the shard's optimizer still moves), and the scaler lowers the scale.
Parameters and pushed gradients are always float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn

from tidal.core import eager_optim
from tidal.core.errors import InvalidArgumentError

__all__ = ["AUTOCAST_DTYPES", "MixedPrecision"]

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _Unscaled(torch.optim.Optimizer):
    """Hands GradScaler the parameters whose gradients it unscales; stepping is the shards' job."""

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        super().__init__(list(params), {})

    def step(self, closure: None = None) -> None:  # type: ignore[override]
        return None


class MixedPrecision:
    """Autocast for the forward pass and, for fp16, the loss scale of one worker's model."""

    def __init__(self, precision: str, device: torch.device, model: nn.Module, init_scale: float = 2.0**16) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise InvalidArgumentError(f"precision: must be one of {sorted(AUTOCAST_DTYPES)}, got {precision!r}")
        self.precision = precision
        self.dtype = AUTOCAST_DTYPES[precision]
        self.device_type = device.type
        fp16 = precision == "fp16"
        self.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale) if fp16 else None
        # Built unwrapped: torch.optim's compile wrappers would import torch._dynamo (seconds) here.
        self._holder = eager_optim.build(_Unscaled, list(model.parameters())) if fp16 else None
        # Steps whose fp16 gradients overflowed and were pushed as zeros.
        self.skipped = 0

    def autocast(self) -> AbstractContextManager[object]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, grads: torch.Tensor) -> bool:
        """Leaves the unscaled gradient of `loss` in `grads` (the model's flat gradient buffer);
        returns whether it is finite."""
        if self.scaler is None or self._holder is None:
            loss.backward()
            return True
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self._holder)
        finite = bool(torch.isfinite(grads).all())
        # unscale_ recorded whether any gradient overflowed; update lowers or grows the scale.
        self.scaler.update()
        if not finite:
            self.skipped += 1
        return finite
