"""Data factories: one that works and the ways a team's can go wrong."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from tidal.core.sources.api import SourceData

CLASSES = 3


class Points(Dataset[tuple[torch.Tensor, int]]):
    """Map-style, sample by sample: noisy points around one centre per class."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.y[index])


def _points(num: int, features: int, gen: torch.Generator) -> Points:
    y = torch.randint(0, CLASSES, (num,), generator=gen)
    centres = torch.eye(CLASSES, features) * 2.0
    return Points(centres[y] + torch.randn(num, features, generator=gen), y)


def points(
    *, rank: int, world_size: int, seed: int, num_samples: int = 64, features: int = 4, nan_at: int | None = None
) -> SourceData:
    """The whole training set on every worker (tidal takes each worker's share); ``nan_at``:
    a training sample whose inputs are NaN."""
    del rank, world_size
    gen = torch.Generator().manual_seed(seed)
    train = _points(num_samples, features, gen)
    if nan_at is not None:
        train.x[nan_at] = float("nan")
    return SourceData(train, _points(num_samples // 4, features, gen), (features,), num_classes=CLASSES)


def unreachable(*, rank: int, world_size: int, seed: int) -> SourceData:
    """A factory whose storage is down."""
    raise ConnectionError("s3://team-bucket/points is not reachable")


def wrong_types(*, rank: int, world_size: int, seed: int) -> Any:
    """A factory that returns its splits in a dict instead of a SourceData."""
    gen = torch.Generator().manual_seed(seed)
    return {"train": _points(8, 4, gen), "val": _points(8, 4, gen)}
