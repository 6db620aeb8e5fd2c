"""examples/byo's user package through tidal's own loaders, as a worker calls them: the data
factory fulfils the source contract and serves the rows of make_data.py's CSV, the model factory
builds, the loss is a scalar that the objective names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tidal.core.errors import InvalidArgumentError, PermissionDeniedError
from tidal.core.models import build_model
from tidal.core.objectives import CROSS_ENTROPY, ObjectiveKind, job_objective
from tidal.core.sources.batches import is_stream
from tidal.core.sources.registry import load_job_data

BYO = Path(__file__).resolve().parents[2] / "examples" / "byo"
ALLOWED = ("byo_user",)
CSV_ARGS = {"target": "rain_tomorrow", "split_column": "year", "val_value": 2025}


@pytest.fixture(autouse=True)
def byo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BYO))


def _all(split: object) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(split[i] for i in range(len(split))), strict=True)  # type: ignore[index,arg-type]
    return torch.stack(xs), torch.stack(ys)


def test_the_data_factory_serves_the_rows_of_the_csv(tmp_path: Path) -> None:
    from make_data import write_csv  # examples/byo/make_data.py, on the path only now

    csv = write_csv(tmp_path)
    own = load_job_data("byo_user.data:weather", {}, 0, 1, 2, model_modules=ALLOWED)
    table = load_job_data("tabular", {"path": str(csv), **CSV_ARGS}, 0, 1, 2, model_modules=ALLOWED)
    assert not is_stream(own.train) and own.part is None  # map-style, whole set: tidal partitions it
    assert (own.input_shape, own.num_classes) == (table.input_shape, table.num_classes) == ((11,), 2)
    for mine, theirs in ((own.train, table.train), (own.val, table.val)):
        (x, y), (tx, ty) = _all(mine), _all(theirs)
        assert torch.equal(y, ty)
        torch.testing.assert_close(x, tx, rtol=0, atol=1e-5)  # one standardisation, summed in another order
    assert len(own.val) == 4 * 365  # the last year of 4 stations


def test_the_data_factory_is_refused_outside_the_allow_list() -> None:
    with pytest.raises(
        PermissionDeniedError, match=r"dataset.name: module 'byo_user.data' is not in TIDAL_MODEL_MODULES"
    ):
        load_job_data("byo_user.data:weather", {}, 0, model_modules=())
    with pytest.raises(InvalidArgumentError, match=r"dataset.args.rows is not an argument"):
        load_job_data("byo_user.data:weather", {"rows": 3}, 0, model_modules=ALLOWED)


def test_the_model_builds_the_same_on_every_call_and_refuses_bad_args() -> None:
    spec = {"width": 16, "blocks": 3}
    one = build_model("byo_user.models:residual_mlp", spec, (11,), 2, 7, model_modules=ALLOWED)
    two = build_model("byo_user.models:residual_mlp", spec, (11,), 2, 7, model_modules=ALLOWED)
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values(), strict=True))
    assert one(torch.zeros(5, 11)).shape == (5, 2)
    with pytest.raises(InvalidArgumentError, match=r"factory failed: model.args.width must be a positive integer"):
        build_model("byo_user.models:residual_mlp", {"width": 0}, (11,), 2, 0, model_modules=ALLOWED)


def test_the_focal_loss_is_the_objective_and_its_metric() -> None:
    objective = job_objective("byo_user.losses:focal_loss", CROSS_ENTROPY, ALLOWED)
    assert objective.kind == ObjectiveKind.USER and objective.metric.name == "focal_loss"
    assert not objective.metric.higher_is_better
    logits = torch.tensor([[4.0, -4.0], [0.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 1])
    loss = objective.loss(logits, target)
    assert loss.dim() == 0
    # An easy example costs almost nothing; a 50/50 one (1 - 0.5)^2 of its cross-entropy.
    expected = 0.25 * torch.log(torch.tensor(2.0)) / 2
    torch.testing.assert_close(loss.detach(), expected, atol=1e-3, rtol=0)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
