"""One flat buffer for a model's parameters and one for its gradients.

Parameters and gradients become views into two contiguous float buffers, in
`named_parameters()` order (the order of the shard map). Received parameter chunks are
then written straight into the model, and each shard's gradient slice is a view of the
flat gradient buffer: no per-step gather or scatter. Autograd accumulates into an
existing `.grad` in place, which is what keeps the gradient views valid (the same
mechanism as DDP's `gradient_as_bucket_view`).
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
        offset = 0
        for p in params:
            n = p.numel()
            p.data = self.params[offset : offset + n].view_as(p)
            p.grad = self.grads[offset : offset + n].view_as(p)
            offset += n

    def zero_grad(self) -> None:
        # Never set_to_none: the gradient views must stay attached to the flat buffer.
        self.grads.zero_()
