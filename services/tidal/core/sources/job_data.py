"""What a worker trains and evaluates on, whatever the source: `JobData`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tidal.core.data_types import Dataset, DatasetInfo
from tidal.core.objectives import Objective, ObjectiveKind
from tidal.core.sources.api import Split
from tidal.core.sources.tensors import TensorPairs

__all__ = ["JobData", "SampleSpec", "from_dataset"]


@dataclass(frozen=True)
class SampleSpec:
    """What one sample of a split must look like: the checks every fetched batch passes."""

    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    # Classification: labels are int64 in [0, num_labels); None: float targets (regression).
    num_labels: int | None


@dataclass(frozen=True)
class JobData:
    """One worker's data for a job: its training split (whole, or its own part), the validation
    split, and what the model is built from."""

    name: str
    train: Split
    val: Split
    input_shape: tuple[int, ...]
    num_classes: int
    objective: Objective
    train_spec: SampleSpec
    val_spec: SampleSpec
    # The (rank, world_size) whose part `train` holds; None: the whole training set.
    part: tuple[int, int] | None = None

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.input_shape, self.num_classes)


def _spec(x: torch.Tensor, y: torch.Tensor, objective: Objective, num_classes: int) -> SampleSpec:
    labels = num_classes if objective.kind == ObjectiveKind.CROSS_ENTROPY else None
    return SampleSpec(tuple(x.shape[1:]), tuple(y.shape[1:]), labels)


def from_dataset(data: Dataset) -> JobData:
    """A built-in data set held in memory, as the worker reads it: batches are the same rows
    `train_x[idx]` as before, so its training is unchanged bit for bit."""
    objective = data.objective
    return JobData(
        name=data.name,
        train=TensorPairs(data.train_x, data.train_y),
        val=TensorPairs(data.val_x, data.val_y),
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        objective=objective,
        train_spec=_spec(data.train_x, data.train_y, objective, data.num_classes),
        val_spec=_spec(data.val_x, data.val_y, objective, data.num_classes),
        part=data.part,
    )
