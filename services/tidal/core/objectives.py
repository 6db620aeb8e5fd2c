"""How a model's output is scored against its target: the loss a worker differentiates and the
metric an evaluation reports.

Every objective has a metric with a name and a direction (`Metric`):

==================  =========================================  ==========  ===============
objective           loss (mean over the batch)                 metric      higher better
==================  =========================================  ==========  ===============
cross_entropy       cross-entropy of class logits              accuracy    yes
bce_with_logits     binary cross-entropy of logits, per entry  accuracy    yes
mse                 mean squared error, per entry              rmse        no
mae                 mean absolute error, per entry             mae         no
weighted_mse        weighted mean squared error (climate)      skill       yes
package.module:fn   fn(output, target), a scalar tensor        fn's name   no
==================  =========================================  ==========  ===============

bce_with_logits' accuracy is the fraction of entries whose logit sign matches the 0/1 target.
A data set may ask for the exact ROC AUC instead (``Objective(BCE_WITH_LOGITS, auc=True)``, as
the click-through sources ``ctr_synthetic`` and ``ctr_flights`` do): metric ``auc``, higher is
better, computed from the ranks of every validation output (``core/auc.py``), not per batch; it
is reported whenever the job trains with the data set's own bce_with_logits objective.
Regression data sets (the climate forecasters) use a weighted mean squared error: the weights
say how much each output element counts (for a global field, the area of its grid cell, i.e.
cos(latitude); zero on halo cells a worker reads only as context). Their metric is the MSE skill
score against a reference forecast, ``1 - loss / reference_loss`` (persistence for the climate
data sets): 0 means as good as the reference, 1 a perfect forecast, below 0 worse.

A user objective ("package.module:fn", allowed by the same operator list as user models,
TIDAL_MODEL_MODULES) returns the batch's mean loss as a scalar tensor; its metric is that
validation loss itself, named after the function (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

import torch
import torch.nn.functional as F

from tidal.core.builtin_names import BUILT_IN_OBJECTIVES
from tidal.core.errors import InvalidArgumentError
from tidal.core.model_source import ModelModules, resolve_user_callable

__all__ = ["BUILT_IN_OBJECTIVES", "CROSS_ENTROPY", "Metric", "Objective", "ObjectiveKind", "job_objective"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ObjectiveKind(StrEnum):
    CROSS_ENTROPY = "cross_entropy"
    WEIGHTED_MSE = "weighted_mse"
    MSE = "mse"
    MAE = "mae"
    BCE_WITH_LOGITS = "bce_with_logits"
    USER = "user"


@dataclass(frozen=True)
class Metric:
    """What an evaluation reports besides the loss: its name and which way is better."""

    name: str
    higher_is_better: bool


_METRICS = {
    ObjectiveKind.CROSS_ENTROPY: Metric("accuracy", True),
    ObjectiveKind.BCE_WITH_LOGITS: Metric("accuracy", True),
    ObjectiveKind.MSE: Metric("rmse", False),
    ObjectiveKind.MAE: Metric("mae", False),
    ObjectiveKind.WEIGHTED_MSE: Metric("skill", True),
}


def _same_shape(kind: ObjectiveKind, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target as a float tensor shaped like the output; a (B,) target fits a (B, 1) output."""
    if target.shape != out.shape and target.numel() == out.numel() and target.shape[:1] == out.shape[:1]:
        target = target.reshape(out.shape)
    if target.shape != out.shape:
        raise InvalidArgumentError(
            f"objective: {kind.value} needs targets shaped like the model output, "
            f"got output {tuple(out.shape)} and target {tuple(target.shape)}"
        )
    return target.to(out.dtype)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """Per-entry values summed over the batch of per-sample means."""
    return values.reshape(values.shape[0], -1).mean(dim=1).sum()


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
    # User objective: the loss function and the metric's name (the function's).
    user_fn: LossFn | None = None
    user_name: str = ""
    # bce_with_logits: report the exact ROC AUC of the validation outputs instead of accuracy.
    auc: bool = False

    def on(self, device: torch.device) -> Objective:
        """This objective with its weights on `device` (itself when they are there already)."""
        weights = (self.train_weight, self.val_weight)
        if all(w is None or w.device == device for w in weights):
            return self
        train, val = (None if w is None else w.to(device) for w in weights)
        return replace(self, train_weight=train, val_weight=val)

    @property
    def metric(self) -> Metric:
        if self.kind == ObjectiveKind.USER:
            return Metric(self.user_name, False)
        if self.ranks_outputs:
            return Metric("auc", True)
        return _METRICS[self.kind]

    @property
    def ranks_outputs(self) -> bool:
        """Whether the metric needs every validation output at once (AUC), not running sums."""
        return self.auc and self.kind == ObjectiveKind.BCE_WITH_LOGITS

    def loss(self, out: torch.Tensor, target: torch.Tensor, train: bool = True) -> torch.Tensor:
        """Mean loss of a batch (a scalar tensor that can be differentiated)."""
        match self.kind:
            case ObjectiveKind.CROSS_ENTROPY:
                return F.cross_entropy(out, target)
            case ObjectiveKind.MSE:
                return F.mse_loss(out, _same_shape(self.kind, out, target))
            case ObjectiveKind.MAE:
                return F.l1_loss(out, _same_shape(self.kind, out, target))
            case ObjectiveKind.BCE_WITH_LOGITS:
                return F.binary_cross_entropy_with_logits(out, _same_shape(self.kind, out, target))
            case ObjectiveKind.USER:
                return self._user_loss(out, target)
        return self.sum_loss(out, target, train) / out.shape[0]

    def sum_loss(self, out: torch.Tensor, target: torch.Tensor, train: bool = False) -> torch.Tensor:
        """Loss summed over the batch (the evaluation accumulates it over batches)."""
        match self.kind:
            case ObjectiveKind.CROSS_ENTROPY:
                return F.cross_entropy(out, target, reduction="sum")
            case ObjectiveKind.MSE | ObjectiveKind.MAE | ObjectiveKind.BCE_WITH_LOGITS | ObjectiveKind.USER:
                return self.loss(out, target, train) * out.shape[0]
        err2 = (out - target).square()
        weight = self.train_weight if train else self.val_weight
        channels = out.shape[1] if out.dim() > 1 else 1
        if weight is None:
            return err2.sum() / (err2[0].numel())
        norm = self.train_norm if train and self.train_norm is not None else float(weight.sum())
        return (err2 * weight).sum() / (channels * norm)

    def score(self, out: torch.Tensor, target: torch.Tensor) -> float:
        """The metric's running sum over a batch: correct predictions for cross-entropy, the
        per-sample fraction of correct entries for bce_with_logits; 0 for the metrics computed
        from the mean loss by `accuracy`."""
        if self.kind == ObjectiveKind.CROSS_ENTROPY:
            return float((out.argmax(dim=1) == target).sum())
        if self.kind == ObjectiveKind.BCE_WITH_LOGITS:
            hits = (out > 0) == (_same_shape(self.kind, out, target) > 0.5)
            return float(_per_sample(hits.to(torch.float64)))
        return 0.0

    def accuracy(self, correct: float, mean_loss: float, n: int) -> float:
        """The metric's value (`metric` names it) from the evaluation's sums."""
        match self.kind:
            case ObjectiveKind.CROSS_ENTROPY | ObjectiveKind.BCE_WITH_LOGITS:
                return correct / max(n, 1)
            case ObjectiveKind.MSE:
                return math.sqrt(max(mean_loss, 0.0))
            case ObjectiveKind.MAE | ObjectiveKind.USER:
                return mean_loss
        if not self.reference_loss:
            return 0.0
        return 1.0 - mean_loss / self.reference_loss

    def _user_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.user_fn is None:
            raise InvalidArgumentError(f"objective {self.user_name!r}: no loss function was resolved")
        try:
            loss = self.user_fn(out, target)
        except InvalidArgumentError:
            raise
        except Exception as exc:  # user code: any failure is the spec's objective's
            raise InvalidArgumentError(f"objective {self.user_name!r}: the loss function raised {exc!r}") from exc
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.is_floating_point():
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InvalidArgumentError(
                f"objective {self.user_name!r}: the loss function must return a floating scalar tensor "
                f"(the batch's mean loss), got {shape}"
            )
        return loss


CROSS_ENTROPY = Objective()


def job_objective(name: str | None, dataset_objective: Objective, model_modules: ModelModules) -> Objective:
    """The objective a job trains with: the spec's `objective` (None: the data set's own).

    A user function is imported here, on the worker, after `model_modules` (the operator's
    allow-list for model code, core/model_source.py) allowed its module. weighted_mse needs
    the weights and the reference loss only a weighted data set has (the climate ones)."""
    if name is None:
        return dataset_objective
    if name in BUILT_IN_OBJECTIVES:
        kind = ObjectiveKind(name)
        if kind == dataset_objective.kind:
            return dataset_objective
        if kind == ObjectiveKind.WEIGHTED_MSE:
            raise InvalidArgumentError(
                "objective: weighted_mse needs a data set with weights and a reference forecast "
                f"(climate_grid, climate_stations); this data set's objective is {dataset_objective.kind.value}"
            )
        return Objective(kind)
    fn = _resolve_user_fn(name, model_modules)
    return Objective(ObjectiveKind.USER, user_fn=fn, user_name=name.partition(":")[2])


def _resolve_user_fn(name: str, model_modules: ModelModules) -> LossFn:
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise InvalidArgumentError(
            f"objective: must be one of {list(BUILT_IN_OBJECTIVES)} or 'package.module:fn', got {name!r}"
        )
    return resolve_user_callable(name, "objective", model_modules, what="fn")
