"""The torch side of the shard map: dtype names to torch dtypes and back, and the tensor
infos of a model's named parameters.

Only the members that hold tensors (shards and workers) import this; the
shard map itself names dtypes so that the coordinator runs without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.shard_map import DTYPE_NAMES, TensorInfo

_BY_NAME: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in _BY_NAME.items()}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a shard map's dtype name stands for."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise InvalidArgumentError(f"dtype: {name!r} is not one of {', '.join(DTYPE_NAMES)}") from None


def dtype_name(dtype: torch.dtype, where: str = "dtype") -> str:
    """The shard map's name of `dtype`; InvalidArgumentError naming `where` if it has none."""
    try:
        return _NAMES[dtype]
    except KeyError:
        supported = ", ".join(DTYPE_NAMES)
        raise InvalidArgumentError(f"{where}: {dtype} cannot be sharded (supported: {supported})") from None


def tensor_infos(named: Sequence[tuple[str, torch.Tensor]]) -> tuple[TensorInfo, ...]:
    """The shard map's view of named tensors, in their order (a model's `named_parameters()`)."""
    return tuple(TensorInfo(name, tuple(t.shape), dtype_name(t.dtype, f"model parameter {name}")) for name, t in named)
