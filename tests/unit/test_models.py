"""Unit tests for tidal.core.models: seeded construction, shapes, factories, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

# isort: split
import tidal.core.models as models_module
from tidal.core.datasets import batch_indices, load_dataset, partition_indices
from tidal.core.errors import InvalidArgumentError, PermissionDeniedError
from tidal.core.models import MODELS, build_model, count_parameters
from tidal.core.plan import job_dataset_info, job_model
from tidal.core.spec import parse_job_spec

_FACTORY_MODULE = "tidal_test_user_models"


def _same_params(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway importable module with model factories, as a user would write."""
    (tmp_path / f"{_FACTORY_MODULE}.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def tiny(input_shape, num_classes, width=4):
                return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], width),
                                     nn.ReLU(), nn.Linear(width, num_classes))

            def double(input_shape, num_classes):
                return nn.Linear(input_shape[-1], num_classes, dtype=torch.float64)

            def not_a_module(input_shape, num_classes):
                return 42

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, _FACTORY_MODULE, raising=False)
    yield _FACTORY_MODULE
    sys.modules.pop(_FACTORY_MODULE, None)


def test_registry_names() -> None:
    assert set(MODELS) == {"mlp", "cnn", "grid_forecaster", "station_mlp", "ctr_mlp"}


@pytest.mark.parametrize(
    ("name", "args", "shape"),
    [("mlp", {}, (14,)), ("mlp", {"hidden": [8]}, (1, 8, 8)), ("cnn", {}, (1, 8, 8))],
)
def test_same_seed_identical_other_seed_different(name: str, args: dict, shape: tuple) -> None:
    a = build_model(name, args, shape, 3, seed=11)
    b = build_model(name, args, shape, 3, seed=11)
    c = build_model(name, args, shape, 3, seed=12)
    assert _same_params(a, b)
    assert not _same_params(a, c)
    assert all(p.dtype == torch.float32 for p in a.parameters())


def test_global_rng_untouched() -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    build_model("mlp", {}, (14,), 2, seed=0)
    build_model("cnn", {}, (3, 8, 8), 2, seed=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_identical_across_processes() -> None:
    code = (
        "import torch; from tidal.core.models import build_model; "
        "m = build_model('mlp', {'hidden': [16]}, (6,), 3, seed=99); "
        "print(repr(torch.cat([p.flatten() for p in m.parameters()]).double().sum().item()))"
    )
    services = Path(models_module.__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(services)},
    ).stdout.strip()
    local = build_model("mlp", {"hidden": [16]}, (6,), 3, seed=99)
    assert float(out) == torch.cat([p.flatten() for p in local.parameters()]).double().sum().item()


def test_mlp_forward_shape_and_param_count() -> None:
    model = build_model("mlp", {}, (14,), 2, seed=0)
    assert model(torch.randn(5, 14)).shape == (5, 2)
    assert count_parameters(model) == (14 * 64 + 64) + (64 * 64 + 64) + (64 * 2 + 2)
    for act in ("relu", "gelu", "tanh"):
        m = build_model("mlp", {"hidden": [], "activation": act}, (1, 4, 4), 3, seed=0)
        assert m(torch.randn(2, 1, 4, 4)).shape == (2, 3)


def test_cnn_forward_shape() -> None:
    model = build_model("cnn", {"channels": [4, 8, 8], "kernel_size": 5}, (3, 16, 12), 10, 0)
    assert model(torch.randn(2, 3, 16, 12)).shape == (2, 10)
    model = build_model("cnn", {"kernel_size": 1}, (1, 7, 9), 4, 0)
    assert model(torch.randn(3, 1, 7, 9)).shape == (3, 4)


def test_cnn_rejects_non_image_input() -> None:
    with pytest.raises(InvalidArgumentError, match=r"model\.name"):
        build_model("cnn", {}, (14,), 2, seed=0)
    with pytest.raises(InvalidArgumentError, match=r"model\.args\.channels"):
        build_model("cnn", {"channels": [4, 4, 4]}, (1, 4, 4), 2, seed=0)


@pytest.mark.parametrize(
    ("name", "args", "field"),
    [
        ("resnet", {}, "model.name"),
        ("", {}, "model.name"),
        ("mlp", {"depth": 3}, "model.args.depth"),
        ("mlp", {"hidden": 64}, "model.args.hidden"),
        ("mlp", {"hidden": [64, 0]}, "model.args.hidden"),
        ("mlp", {"hidden": [True]}, "model.args.hidden"),
        ("mlp", {"activation": "swish"}, "model.args.activation"),
        ("mlp", {"num_classes": 3}, "model.args.num_classes"),
        ("cnn", {"channels": []}, "model.args.channels"),
        ("cnn", {"kernel_size": 0}, "model.args.kernel_size"),
        ("cnn", {"kernel_size": 4}, "model.args.kernel_size"),
        ("cnn", {"kernel_size": -1}, "model.args.kernel_size"),
        ("cnn", {"kernel_size": "3"}, "model.args.kernel_size"),
    ],
)
def test_bad_name_or_args(name: str, args: dict, field: str) -> None:
    shape = (1, 8, 8) if name == "cnn" else (14,)
    with pytest.raises(InvalidArgumentError, match=field.replace(".", r"\.")):
        build_model(name, args, shape, 2, seed=0)


def test_import_path_factory(user_module: str) -> None:
    a = build_model(f"{user_module}:tiny", {"width": 5}, (6,), 3, seed=4)
    b = build_model(f"{user_module}:tiny", {"width": 5}, (6,), 3, seed=4)
    assert _same_params(a, b)
    assert a(torch.randn(2, 6)).shape == (2, 3)
    assert count_parameters(a) == 6 * 5 + 5 + 5 * 3 + 3
    wide = build_model(f"{user_module}:double", {}, (6,), 3, seed=4)
    assert all(p.dtype == torch.float32 for p in wide.parameters())


def test_model_modules_is_passed_in_and_checked_before_the_import(user_module: str) -> None:
    build_model(f"{user_module}:tiny", {}, (6,), 3, seed=0, model_modules=(user_module,))
    build_model("mlp", {}, (6,), 3, seed=0, model_modules=())  # built-ins are always allowed
    sys.modules.pop(user_module, None)
    with pytest.raises(PermissionDeniedError, match=rf"module '{user_module}' is not in TIDAL_MODEL_MODULES"):
        build_model(f"{user_module}:tiny", {}, (6,), 3, seed=0, model_modules=("elsewhere",))
    assert user_module not in sys.modules  # refused before its top-level code ran


def test_job_model_checks_the_model_modules_it_is_handed_not_the_environment(
    user_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only workers build models, and they pass their settings down; the environment of the
    # process is read once, by the CLI (tests/unit/test_config_object.py).
    spec = parse_job_spec({"model": {"name": f"{user_module}:tiny"}, "dataset": {"name": "synthetic"}})
    info = job_dataset_info(spec)
    monkeypatch.setenv("TIDAL_MODEL_MODULES", user_module)
    with pytest.raises(PermissionDeniedError, match=r"^model\.name: module"):
        job_model(spec, info, model_modules=("elsewhere",))
    job_model(spec, info, model_modules=(user_module,))


@pytest.mark.parametrize(
    ("target", "args", "field"),
    [
        ("{m}:not_a_module", {}, "model.name"),
        ("{m}:NOT_CALLABLE", {}, "model.name"),
        ("{m}:missing", {}, "model.name"),
        ("{m}_nope:tiny", {}, "model.name"),
        ("{m}:", {}, "model.name"),
        ("{m}:tiny", {"depth": 2}, "model.args.depth"),
    ],
)
def test_import_path_errors(user_module: str, target: str, args: dict, field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field.replace(".", r"\.")):
        build_model(target.format(m=user_module), args, (6,), 3, seed=0)


def test_bad_shape_classes_seed() -> None:
    with pytest.raises(InvalidArgumentError, match="input_shape"):
        build_model("mlp", {}, (0,), 2, seed=0)
    with pytest.raises(InvalidArgumentError, match="num_classes"):
        build_model("mlp", {}, (4,), 0, seed=0)
    with pytest.raises(InvalidArgumentError, match="seed"):
        build_model("mlp", {}, (4,), 2, seed=-(1 << 70))


def test_mlp_learns_synthetic() -> None:
    data = load_dataset("synthetic", {"num_samples": 2048, "num_features": 16}, seed=0)
    model = build_model("mlp", {"hidden": [32]}, data.input_shape, data.num_classes, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    part = partition_indices(len(data.train_y), rank=0, world_size=1, seed=0)
    for step in range(300):
        idx = batch_indices(part, 32, step, seed=0, rank=0)
        loss = nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(data.val_x).argmax(dim=1) == data.val_y).float().mean().item()
    assert acc > 0.7, f"val accuracy {acc:.3f} is not clearly above chance (0.25)"
