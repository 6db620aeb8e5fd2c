"""One flat buffer for a model's parameters and one for its gradients.

Parameters and gradients become views into two contiguous float buffers, in
`named_parameters()` order (the order of the shard map). Received parameter chunks are
then written straight into the model, and each shard's gradient slice is a view of the
flat gradient buffer: no per-step gather or scatter. Autograd accumulates into an
existing `.grad` in place, which is what keeps the gradient views valid (the same
mechanism as DDP's `gradient_as_bucket_view`).

On an accelerator (`StagedFlatModel`) the model's parameters and gradients are views of two
flat buffers on the device instead, and the host buffers the shard links read and write are
staged: parameters are copied host->device before a forward pass, gradients device->host
after the backward pass (pinned host memory on CUDA, so the copies can be asynchronous).
"""

from __future__ import annotations

import torch
from torch import nn


class FlatModel:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        params = [p for _, p in model.named_parameters()]
        dtype = params[0].dtype
        self.params = torch.cat([p.detach().reshape(-1) for p in params]).to(dtype)
        self.grads = torch.zeros_like(self.params)
        # The buffers the model computes with: on the CPU, the host buffers themselves.
        self.device_params, self.device_grads = self.params, self.grads
        _attach(model, self.params, self.grads)

    @property
    def device(self) -> torch.device:
        return self.device_params.device

    def zero_grad(self) -> None:
        # Never set_to_none: the gradient views must stay attached to the flat buffer.
        self.device_grads.zero_()

    def to_device(self) -> None:
        """Makes the model compute with the host parameters (nothing to do: they are its own)."""

    def grads_to_host(self) -> None:
        """Makes the host gradient buffer hold the model's gradients (nothing to do: it does)."""

    def on_device(self, t: torch.Tensor) -> torch.Tensor:
        return t


class StagedFlatModel(FlatModel):
    """A model on `device` whose host flat buffers are copies, kept in step by `to_device` and
    `grads_to_host`. `device` may be the CPU (tests exercise the copies there)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__(model)
        if device.type == "cuda":
            self.params, self.grads = self.params.pin_memory(), self.grads.pin_memory()
        model.to(device)  # buffers (e.g. batch-norm statistics) too
        self.device_params = self.params.to(device, copy=True)
        self.device_grads = torch.zeros_like(self.device_params)
        _attach(model, self.device_params, self.device_grads)

    def to_device(self) -> None:
        self.device_params.copy_(self.params, non_blocking=True)

    def grads_to_host(self) -> None:
        self.grads.copy_(self.device_grads, non_blocking=True)
        if self.device.type == "cuda":
            # The links read the host buffer as soon as this returns.
            torch.cuda.synchronize(self.device)

    def on_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)


def build_flat_model(model: nn.Module, device: torch.device) -> FlatModel:
    """Views of the host buffers on the CPU, staged copies on an accelerator."""
    return FlatModel(model) if device.type == "cpu" else StagedFlatModel(model, device)


def _attach(model: nn.Module, params: torch.Tensor, grads: torch.Tensor) -> None:
    """Makes the model's parameters and gradients views of the two flat buffers."""
    offset = 0
    for _, p in model.named_parameters():
        n = p.numel()
        p.data = params[offset : offset + n].view_as(p)
        p.grad = grads[offset : offset + n].view_as(p)
        offset += n
