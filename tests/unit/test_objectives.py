"""Objectives (core/objectives.py): each built-in's loss and metric against hand-computed values,
the choice between the spec's objective and the data set's own, and user loss functions behind
the operator's allow-list."""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

# isort: split
from tidal.core.builtin_names import BUILT_IN_OBJECTIVES
from tidal.core.errors import InvalidArgumentError, PermissionDeniedError
from tidal.core.objectives import CROSS_ENTROPY, Metric, Objective, ObjectiveKind, job_objective
from tidal.core.training import evaluate, tensor_batches

_LOSS_MODULE = "tidal_test_user_losses"


class Fixed(nn.Module):
    """Returns the same outputs for any input: the evaluation then scores exactly these."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out[: len(x)] + 0 * self.unused


def _eval(objective: Objective, out: torch.Tensor, target: torch.Tensor) -> tuple[float, float, Metric]:
    result = evaluate(Fixed(out), tensor_batches(torch.zeros(len(target), 1), target), objective=objective)
    return result.loss, result.accuracy, result.metric


OUT = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
TARGET = torch.tensor([[0.0, 2.0], [3.0, 6.0]])  # errors 1, 0, 0, -2


def test_the_spec_and_the_objectives_name_the_same_built_ins() -> None:
    assert set(BUILT_IN_OBJECTIVES) == {k.value for k in ObjectiveKind} - {"user"}


def test_mse_loss_and_its_rmse_metric() -> None:
    mse = Objective(ObjectiveKind.MSE)
    assert float(mse.loss(OUT, TARGET)) == pytest.approx((1 + 0 + 0 + 4) / 4)
    loss, value, metric = _eval(mse, OUT, TARGET)
    assert loss == pytest.approx(1.25)
    assert value == pytest.approx(math.sqrt(1.25))
    assert metric == Metric("rmse", higher_is_better=False)


def test_mae_loss_and_metric() -> None:
    mae = Objective(ObjectiveKind.MAE)
    assert float(mae.loss(OUT, TARGET)) == pytest.approx(0.75)
    loss, value, metric = _eval(mae, OUT, TARGET)
    assert (loss, value) == (pytest.approx(0.75), pytest.approx(0.75))
    assert metric == Metric("mae", higher_is_better=False)


def test_bce_with_logits_takes_a_flat_target_for_one_logit_and_scores_the_sign() -> None:
    bce = Objective(ObjectiveKind.BCE_WITH_LOGITS)
    logits = torch.tensor([[0.0], [2.0], [-1.0], [-3.0]])
    target = torch.tensor([1, 1, 1, 0])  # class ids, shaped (B,)
    expected = (math.log(2) + math.log1p(math.exp(-2)) + math.log1p(math.e) + math.log1p(math.exp(-3))) / 4
    assert float(bce.loss(logits, target)) == pytest.approx(expected)
    loss, value, metric = _eval(bce, logits, target)
    assert loss == pytest.approx(expected)
    assert value == pytest.approx(2 / 4)  # 2.0 -> 1 and -3.0 -> 0 are right; 0.0 and -1.0 are not
    assert metric == Metric("accuracy", higher_is_better=True)


def test_cross_entropy_keeps_its_accuracy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    target = torch.tensor([0, 0, 0])
    loss, value, metric = _eval(CROSS_ENTROPY, logits, target)
    assert loss == pytest.approx(float(F.cross_entropy(logits, target)))
    assert value == pytest.approx(2 / 3)
    assert metric == Metric("accuracy", higher_is_better=True)


def test_weighted_mse_reports_skill() -> None:
    weighted = Objective(ObjectiveKind.WEIGHTED_MSE, reference_loss=2.5)
    loss, value, metric = _eval(weighted, OUT, TARGET)
    assert loss == pytest.approx(1.25)
    assert value == pytest.approx(1 - 1.25 / 2.5)
    assert metric == Metric("skill", higher_is_better=True)


def test_an_element_wise_loss_refuses_targets_of_another_shape() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^objective: mse needs targets shaped like the model output"):
        Objective(ObjectiveKind.MSE).loss(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))


# --- which objective a job trains with -------------------------------------------------------


def test_unset_keeps_the_data_sets_own_objective() -> None:
    climate = Objective(ObjectiveKind.WEIGHTED_MSE, val_weight=torch.ones(3), reference_loss=1.0)
    assert job_objective(None, CROSS_ENTROPY, None) is CROSS_ENTROPY
    assert job_objective(None, climate, None) is climate
    assert job_objective("weighted_mse", climate, None) is climate  # its weights and reference kept
    assert job_objective("cross_entropy", CROSS_ENTROPY, None) is CROSS_ENTROPY


def test_a_built_in_replaces_the_data_sets_objective() -> None:
    climate = Objective(ObjectiveKind.WEIGHTED_MSE, reference_loss=1.0)
    assert job_objective("mae", climate, None).kind is ObjectiveKind.MAE
    assert job_objective("bce_with_logits", CROSS_ENTROPY, ()).metric == Metric("accuracy", True)


def test_weighted_mse_needs_a_weighted_data_set() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^objective: weighted_mse needs a data set with weights"):
        job_objective("weighted_mse", CROSS_ENTROPY, None)


def test_objectives_move_their_weights_to_the_device() -> None:
    climate = Objective(ObjectiveKind.WEIGHTED_MSE, train_weight=torch.ones(3), reference_loss=1.0)
    assert climate.on(torch.device("cpu")) is climate  # already there: the same object
    meta = climate.on(torch.device("meta"))
    assert meta.train_weight is not None and meta.train_weight.device.type == "meta"
    assert meta.val_weight is None and meta.reference_loss == 1.0


# --- user loss functions --------------------------------------------------------------------


@pytest.fixture
def loss_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway importable module with loss functions, as a user would write."""
    (tmp_path / f"{_LOSS_MODULE}.py").write_text(
        textwrap.dedent(
            """
            import torch.nn.functional as F

            def huber(out, target):
                return F.smooth_l1_loss(out, target)

            def per_element(out, target):
                return (out - target).abs()

            def broken(out, target):
                raise ValueError("no luck")

            def not_a_tensor(out, target):
                return 1.5

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, _LOSS_MODULE, raising=False)
    yield _LOSS_MODULE
    sys.modules.pop(_LOSS_MODULE, None)


def test_an_allowed_user_function_is_the_loss_and_its_metric(loss_module: str) -> None:
    objective = job_objective(f"{loss_module}:huber", CROSS_ENTROPY, (loss_module,))
    assert objective.kind is ObjectiveKind.USER
    expected = float(F.smooth_l1_loss(OUT, TARGET))  # (0.5 + 0 + 0 + 1.5) / 4
    assert expected == pytest.approx(0.5)
    assert float(objective.loss(OUT, TARGET)) == pytest.approx(expected)
    loss, value, metric = _eval(objective, OUT, TARGET)
    assert (loss, value) == (pytest.approx(expected), pytest.approx(expected))
    assert metric == Metric("huber", higher_is_better=False)


def test_a_user_function_outside_the_allow_list_is_refused_before_its_import(loss_module: str) -> None:
    with pytest.raises(PermissionDeniedError, match=r"^objective: module 'tidal_test_user_losses' is not in"):
        job_objective(f"{loss_module}:huber", CROSS_ENTROPY, ("elsewhere",))
    assert loss_module not in sys.modules
    with pytest.raises(PermissionDeniedError, match=r"^objective: .*allowed: none"):
        job_objective(f"{loss_module}:huber", CROSS_ENTROPY, ())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("per_element", r"^objective 'per_element': the loss function must return a floating scalar tensor .*\(2, 2\)"),
        ("not_a_tensor", r"^objective 'not_a_tensor': the loss function must return .*got float"),
        ("broken", r"^objective 'broken': the loss function raised ValueError\('no luck'\)"),
    ],
)
def test_a_user_function_that_misbehaves_fails_naming_the_objective(loss_module: str, name: str, message: str) -> None:
    objective = job_objective(f"{loss_module}:{name}", CROSS_ENTROPY, None)
    with pytest.raises(InvalidArgumentError, match=message):
        objective.loss(OUT, TARGET)


@pytest.mark.parametrize(
    ("attr", "message"),
    [("missing", r"has no callable 'missing'"), ("NOT_CALLABLE", r"has no callable 'NOT_CALLABLE'")],
)
def test_a_user_function_must_exist(loss_module: str, attr: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^objective '{loss_module}:{attr}': .*{message}"):
        job_objective(f"{loss_module}:{attr}", CROSS_ENTROPY, None)


def test_a_user_module_that_cannot_be_imported() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^objective 'no_such_pkg.losses:fn': cannot import module"):
        job_objective("no_such_pkg.losses:fn", CROSS_ENTROPY, None)
