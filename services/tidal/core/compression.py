"""Gradient compression on the wire: which element type a job's gradients travel in."""

from __future__ import annotations

import torch

from tidal.core.spec import CompressionSpec

WIRE_DTYPES: dict[str, torch.dtype | None] = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def wire_dtype(compression: CompressionSpec) -> torch.dtype | None:
    """The dtype gradients are sent in, or None to send them as the parameters' dtype."""
    return WIRE_DTYPES[compression.codec]
