"""How a model's output is scored against its target: the loss a worker differentiates and the
two numbers an evaluation reports.

Classification data sets use cross-entropy and report accuracy. Regression data sets (the
climate forecasters) use a weighted mean squared error: the weights say how much each output
element counts (for a global field, the area of its grid cell, i.e. cos(latitude); zero on
halo cells a worker reads only as context). Their "accuracy" is the MSE skill score against a
reference forecast, ``1 - loss / reference_loss`` (persistence for the climate data sets): 0
means as good as the reference, 1 a perfect forecast, below 0 worse than the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F

__all__ = ["CROSS_ENTROPY", "Objective", "ObjectiveKind"]


class ObjectiveKind(StrEnum):
    CROSS_ENTROPY = "cross_entropy"
    WEIGHTED_MSE = "weighted_mse"


@dataclass(frozen=True, eq=False)
class Objective:
    kind: ObjectiveKind = ObjectiveKind.CROSS_ENTROPY
    # Weighted MSE: weights broadcastable to one target sample (e.g. (H, W) over a grid), for
    # the worker's training part and for the validation split. None: every element counts 1.
    # Loss = sum(w * err^2) / (batch * channels * sum(w)) with w broadcast to one channel of a
    # sample, i.e. a weighted mean; `train_norm` replaces sum(w) when given, so tiles of one
    # global grid can share the global normalisation (their mean over ranks is then exactly
    # the global weighted loss).
    train_weight: torch.Tensor | None = None
    val_weight: torch.Tensor | None = None
    train_norm: float | None = None
    # Weighted MSE: the reference forecast's loss on the validation split (must be > 0).
    reference_loss: float | None = None

    def loss(self, out: torch.Tensor, target: torch.Tensor, train: bool = True) -> torch.Tensor:
        """Mean loss of a batch (a scalar tensor that can be differentiated)."""
        if self.kind == ObjectiveKind.CROSS_ENTROPY:
            return F.cross_entropy(out, target)
        return self.sum_loss(out, target, train) / out.shape[0]

    def sum_loss(self, out: torch.Tensor, target: torch.Tensor, train: bool = False) -> torch.Tensor:
        """Loss summed over the batch (the evaluation accumulates it over batches)."""
        if self.kind == ObjectiveKind.CROSS_ENTROPY:
            return F.cross_entropy(out, target, reduction="sum")
        err2 = (out - target).square()
        weight = self.train_weight if train else self.val_weight
        channels = out.shape[1] if out.dim() > 1 else 1
        if weight is None:
            return err2.sum() / (err2[0].numel())
        norm = self.train_norm if train and self.train_norm is not None else float(weight.sum())
        return (err2 * weight).sum() / (channels * norm)

    def score(self, out: torch.Tensor, target: torch.Tensor) -> float:
        """Accuracy: the number of correct predictions (classification); 0 for regression,
        whose skill is computed from the mean loss by `skill`."""
        if self.kind == ObjectiveKind.CROSS_ENTROPY:
            return float((out.argmax(dim=1) == target).sum())
        return 0.0

    def accuracy(self, correct: float, mean_loss: float, n: int) -> float:
        if self.kind == ObjectiveKind.CROSS_ENTROPY:
            return correct / max(n, 1)
        if not self.reference_loss:
            return 0.0
        return 1.0 - mean_loss / self.reference_loss


CROSS_ENTROPY = Objective()
