"""One digest of parameter values, the same in every process: what a worker announces of its
initial model (core/plan.py `model_layout`), and what a shard keeps of the initial slice it
was given, so every worker that opens a stream later can be checked against it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

# BLAKE2b-128, as hex: 32 digits.
DIGEST_BYTES = 16


def values_digest(tensors: Iterable[torch.Tensor]) -> str:
    """BLAKE2b-128 of the tensors' raw bytes, one after the other (little-endian, as every
    supported platform holds them), as hex."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for t in tensors:
        digest.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
