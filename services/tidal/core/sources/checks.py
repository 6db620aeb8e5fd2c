"""Turns what a source returned into checked tensors: float32 inputs, int64 labels or float32
targets, of the declared shapes and finite. Every refusal names where the data came from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.sources.job_data import SampleSpec

__all__ = ["as_batch", "check_batch"]


def _tensor(value: Any, what: str, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise InvalidArgumentError(f"{where}: {what} is a numpy array of Python objects")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(value)
    raise InvalidArgumentError(f"{where}: {what} is a {type(value).__name__}, not a tensor or numpy array")


def _is_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2


def as_batch(out: Any, count: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch from either ``(x, y)`` batched tensors or a sequence of ``count`` ``(x, y)`` samples."""
    batched = isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in out)
    if batched:
        x, y = _tensor(out[0], "x", where), _tensor(out[1], "y", where)
        if x.dim() == 0 or y.dim() == 0 or len(x) != count or len(y) != count:
            raise InvalidArgumentError(
                f"{where}: a batch of {count} samples came back with x of shape {tuple(x.shape)} "
                f"and y of shape {tuple(y.shape)}"
            )
        return x, y
    if not isinstance(out, Sequence) or len(out) != count:
        raise InvalidArgumentError(f"{where}: expected {count} (x, y) samples, got a {type(out).__name__}")
    return _stack(out, where)


def _stack(samples: Sequence[Any], where: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for i, sample in enumerate(samples):
        if not _is_pair(sample):
            raise InvalidArgumentError(f"{where}: sample {i} is a {type(sample).__name__}, not an (x, y) pair")
        xs.append(_tensor(sample[0], f"x of sample {i}", where))
        ys.append(_tensor(sample[1], f"y of sample {i}", where))
    for name, parts in (("x", xs), ("y", ys)):
        shapes = {tuple(t.shape) for t in parts}
        if len(shapes) > 1:
            raise InvalidArgumentError(f"{where}: samples have {name} of different shapes {sorted(shapes)}")
    return torch.stack(xs), torch.stack(ys)


def _first_bad(mask: torch.Tensor, indices: torch.Tensor | None) -> str:
    row = int(mask.reshape(len(mask), -1).all(dim=1).logical_not().nonzero()[0, 0])
    return f"sample {int(indices[row])}" if indices is not None else f"row {row} of the batch"


def check_batch(
    x: torch.Tensor, y: torch.Tensor, spec: SampleSpec, where: str, indices: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as training reads it, or InvalidArgumentError saying what is wrong and where
    (``indices``: the samples' indices in their split, to name a bad one)."""
    if x.dtype.is_complex or y.dtype.is_complex:
        raise InvalidArgumentError(f"{where}: complex tensors are not supported")
    if tuple(x.shape[1:]) != spec.x_shape:
        raise InvalidArgumentError(f"{where}: x has sample shape {tuple(x.shape[1:])}, declared {spec.x_shape}")
    if tuple(y.shape[1:]) != spec.y_shape:
        raise InvalidArgumentError(f"{where}: y has sample shape {tuple(y.shape[1:])}, declared {spec.y_shape}")
    x = x.to(torch.float32)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise InvalidArgumentError(f"{where}: x holds NaN or infinity ({_first_bad(finite, indices)})")
    if spec.num_labels is None:
        y = y.to(torch.float32)
        finite = torch.isfinite(y)
        if not bool(finite.all()):
            raise InvalidArgumentError(f"{where}: y holds NaN or infinity ({_first_bad(finite, indices)})")
        return x, y
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InvalidArgumentError(f"{where}: class labels y must be integers, got {y.dtype}")
    y = y.to(torch.int64)
    inside = (y >= 0) & (y < spec.num_labels)
    if not bool(inside.all()):
        bad = int(y[~inside][0])
        raise InvalidArgumentError(
            f"{where}: class label {bad} is outside [0, {spec.num_labels}) ({_first_bad(inside, indices)})"
        )
    return x, y
