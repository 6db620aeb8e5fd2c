"""A map-style split over tensors already in memory."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["TensorPairs"]


class TensorPairs:
    """Rows of ``x`` and ``y`` (the same length); ``__getitems__`` gathers a batch at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.x[idx], self.y[idx]
