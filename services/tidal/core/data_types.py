"""What a data set hands to training: tensors, what the model sees, and how it is scored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tidal.core.objectives import CROSS_ENTROPY, Objective

__all__ = ["Dataset", "DatasetInfo", "PartitionedSource"]


@dataclass(frozen=True)
class DatasetInfo:
    """What the model is built from: known without reading the data (shards and the
    coordinator need nothing else)."""

    input_shape: tuple[int, ...]
    # Classes of a classification data set; outputs (channels) of a regression data set.
    num_classes: int


@dataclass(frozen=True)
class Dataset:
    """A data set in memory with a train and a validation split.

    For the built-in classification sets the train split is the whole training set and each
    worker draws its partition from it. A partitioned data set (the climate ones) loads only
    one worker's part: then `model_input_shape` gives the shape the model is built for, which
    may differ from one sample of this part (e.g. a tile of a global grid).
    """

    name: str
    train_x: torch.Tensor  # float32, shape (N, *input_shape)
    train_y: torch.Tensor  # int64 class ids (N,), or float32 targets (N, *output_shape)
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    objective: Objective = field(default=CROSS_ENTROPY)
    model_input_shape: tuple[int, ...] | None = None
    # Partitioned data sets: the (rank, world_size) whose part this is; None: the whole set.
    part: tuple[int, int] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape the model is built for (of one sample, without the batch dimension)."""
        if self.model_input_shape is not None:
            return self.model_input_shape
        return tuple(self.train_x.shape[1:])

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.input_shape, self.num_classes)


@dataclass(frozen=True)
class PartitionedSource:
    """A data set too large to load whole: each worker loads its own part."""

    # (args, seed) -> input shape and outputs, from metadata only.
    describe: Callable[[dict[str, Any], int], DatasetInfo]
    # (args, seed, rank, world_size) -> the rank's training part and the validation split.
    load: Callable[[dict[str, Any], int, int, int], Dataset]
