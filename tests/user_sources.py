"""Data sources written the way a team writes its own: plain torch data sets behind a factory.
tidal loads them as ``dataset.name: "tests.user_sources:<factory>"`` (the tests are importable
from the repository root, which is where tidal's processes start)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from tidal.core.sources.api import SourceData


class Blobs(Dataset[tuple[torch.Tensor, int]]):
    """Map-style, sample by sample (no __getitems__): three Gaussian blobs in ``features`` dims."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.y[index])


def _blobs(num: int, features: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, 3, (num,), generator=gen)
    centres = torch.eye(3, features) * 3.0
    return centres[y] + torch.randn(num, features, generator=gen), y


def blobs(
    *, rank: int, world_size: int, seed: int, num_samples: int = 96, features: int = 4, nan_at: int | None = None
) -> SourceData:
    """The whole training set on every worker (tidal partitions it); ``nan_at``: a training
    sample whose inputs are NaN (to see it refused)."""
    del rank, world_size  # tidal takes this worker's share of the indices
    gen = torch.Generator().manual_seed(seed)
    x, y = _blobs(num_samples, features, gen)
    if nan_at is not None:
        x[nan_at] = float("nan")
    val_x, val_y = _blobs(num_samples // 4, features, gen)
    return SourceData(Blobs(x, y), Blobs(val_x, val_y), (features,), num_classes=3)


class Ramp(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """A stream: the samples ``first, first + step, ...`` below ``stop`` of y = 2 x."""

    def __init__(self, first: int, stop: int, step: int) -> None:
        self.first, self.stop, self.step = first, stop, step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(self.first, self.stop, self.step):
            x = torch.tensor([i / 100.0, 1.0])
            yield x, 2.0 * x[:1]


def ramp(*, rank: int, world_size: int, seed: int, num_samples: int = 60) -> SourceData:
    """A regression stream: worker ``rank`` yields every ``world_size``-th sample from ``rank``."""
    del seed
    return SourceData(Ramp(rank, num_samples, world_size), Ramp(0, 20, 1), (2,), output_shape=(1,))


def broken(*, rank: int, world_size: int, seed: int, kind: str) -> Any:
    """Factories that go wrong in the ways a user's can."""
    del rank, world_size
    gen = torch.Generator().manual_seed(seed)
    x, y = _blobs(8, 4, gen)
    if kind == "raises":
        raise RuntimeError("the bucket is not reachable")
    if kind == "not_source_data":
        return {"train": Blobs(x, y)}
    if kind == "shape":
        return SourceData(Blobs(x, y), Blobs(x, y), (5,), num_classes=3)
    if kind == "not_a_dataset":
        return SourceData([1, 2, 3], Blobs(x, y), (4,), num_classes=3)  # type: ignore[arg-type]
    if kind == "label":
        return SourceData(Blobs(x, y + 5), Blobs(x, y), (4,), num_classes=3)
    return SourceData(Blobs(x, y), Blobs(x, y), (4,))  # neither num_classes nor output_shape
