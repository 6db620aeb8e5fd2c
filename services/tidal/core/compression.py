"""Compression on the wire: a narrower element type (fp16, bf16), or top-k sparsification
with error feedback (only the largest entries travel; what is not sent is kept on the worker
and added to the next gradient, so nothing is lost, only delayed).

Gradients travel in `wire_dtype`. Parameters travel down in `params_wire_dtype`: bf16 when
the job compresses with bf16 (same exponent range as float32, so rounding cannot overflow);
otherwise, fp16 included, in the parameters' own dtype. The shard's float32 parameters stay
the master copy either way."""

from __future__ import annotations

import math

import torch

from tidal.core.spec import CompressionSpec

WIRE_DTYPES: dict[str, torch.dtype | None] = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16, "topk": None}


def wire_dtype(compression: CompressionSpec) -> torch.dtype | None:
    """The dtype gradients are sent in, or None to send them as the parameters' dtype."""
    return WIRE_DTYPES[compression.codec]


# What parameters travel down in, per codec (None: the parameters' own dtype).
PARAMS_WIRE_DTYPES: dict[str, torch.dtype | None] = {"none": None, "fp16": None, "bf16": torch.bfloat16, "topk": None}


def params_wire_dtype(compression: CompressionSpec) -> torch.dtype | None:
    """The dtype shards send parameters to workers in, or None to send them as they are held."""
    return PARAMS_WIRE_DTYPES[compression.codec]


class TopK:
    """Top-k with error feedback over a flat gradient, chosen per shard range."""

    def __init__(self, numel: int, ratio: float) -> None:
        self.ratio = ratio
        self.residual = torch.zeros(numel)

    def select(self, grad: torch.Tensor, ranges: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Adds `grad` to the residual and returns, per range, the sorted positions (within the
        range) of the k largest residual entries. The caller sends `residual[start:end][idx]`
        and then calls `sent` to clear what left."""
        self.residual.add_(grad)
        picked = []
        for start, end in ranges:
            window = self.residual[start:end]
            k = max(1, math.ceil(self.ratio * window.numel()))
            picked.append(torch.topk(window.abs(), k, sorted=False).indices.sort().values)
        return picked

    def sent(self, ranges: list[tuple[int, int]], picked: list[torch.Tensor]) -> None:
        for (start, end), idx in zip(ranges, picked, strict=True):
            self.residual[start:end][idx] = 0.0
