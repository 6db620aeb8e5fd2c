"""Where and in which precision a worker computes: the spec's device, precision and objective
fields, device resolution, the staged host<->device buffers (exercised on the CPU with the
copies forced, against the plain views), and bf16 / fp16 gradient steps."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

# isort: split
from tidal import cli_common
from tidal.cli import app
from tidal.config import SECURITY_ENV
from tidal.core.devices import resolve_device
from tidal.core.errors import InvalidArgumentError
from tidal.core.flat import FlatModel, StagedFlatModel, build_flat_model
from tidal.core.objectives import Objective, ObjectiveKind
from tidal.core.precision import MixedPrecision
from tidal.core.spec import parse_job_spec
from tidal.core.training import compute_gradient, evaluate, tensor_batches
from tidal.transport.settings import ServiceSettings
from tidal.transport.tls import SecurityConfig

CPU = torch.device("cpu")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.BatchNorm1d(8), nn.Linear(8, 3))


def batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


# --- the spec -------------------------------------------------------------------------------


def test_the_defaults_are_todays_behaviour() -> None:
    spec = parse_job_spec({})
    assert (spec.objective, spec.device, spec.precision) == (None, "auto", "fp32")
    again = parse_job_spec(spec.to_json())
    assert again == spec


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_spec_takes_devices_and_precisions(device: str, precision: str) -> None:
    spec = parse_job_spec({"device": device, "precision": precision})
    assert (spec.device, spec.precision) == (device, precision)


@pytest.mark.parametrize("objective", ["mse", "mae", "bce_with_logits", "weighted_mse", "lab.losses:huber", "m:f"])
def test_the_spec_takes_objectives(objective: str) -> None:
    assert parse_job_spec({"objective": objective}).objective == objective


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device", "gpu", r"^spec\.device: must be auto, cpu, cuda or cuda:N, got 'gpu'$"),
        ("device", "cuda:x", r"^spec\.device: must be auto, cpu, cuda or cuda:N"),
        ("device", 0, r"^spec\.device: Input should be a valid string"),
        ("precision", "fp8", r"^spec\.precision: Input should be 'fp32', 'bf16' or 'fp16'"),
        (
            "objective",
            "huber",
            r"^spec\.objective: must be one of \['cross_entropy', .*'package\.module:fn', got 'huber'",
        ),
        ("objective", "a b:c", r"^spec\.objective: must be one of"),
        ("objective", "mod:", r"^spec\.objective: must be one of"),
    ],
)
def test_bad_devices_precisions_and_objectives_are_refused_by_name(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse_job_spec({field: value})


# --- devices --------------------------------------------------------------------------------


@no_cuda
def test_auto_is_the_cpu_without_cuda_and_cuda_is_refused() -> None:
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU
    with pytest.raises(InvalidArgumentError, match=r"^device: 'cuda' asked for, but this worker has no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(InvalidArgumentError, match=r"^--device: 'cuda:1' asked for"):
        resolve_device("cuda:1", "--device")


def test_a_malformed_device_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^--device: must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu", "--device")


def test_a_workers_device_setting_is_checked_when_built() -> None:
    assert ServiceSettings(SecurityConfig(), False).device is None
    assert ServiceSettings(SecurityConfig(), False, None, "cuda:1").device == "cuda:1"
    with pytest.raises(InvalidArgumentError, match=r"^device: must be auto, cpu, cuda or cuda:N, got 'npu'"):
        ServiceSettings(SecurityConfig(), False, None, "npu")


@pytest.mark.parametrize(
    ("args", "env"), [(["--device", "npu"], {}), ([], {"TIDAL_DEVICE": "npu"})], ids=["flag", "variable"]
)
def test_a_bad_worker_device_stops_the_worker_before_it_starts(args: list[str], env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["worker", "--allow-plaintext", *args], env=env)
    assert result.exit_code == 2, result.output
    assert "device: must be auto, cpu, cuda or cuda:N, got 'npu'" in " ".join(result.output.split())


def test_the_worker_cli_passes_its_device_down(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in SECURITY_ENV.values():
        monkeypatch.delenv(var, raising=False)
    settings = cli_common.build_service_settings("worker", allow_plaintext=True, shared_memory="off", device="cuda:1")
    assert settings.device == "cuda:1"
    assert cli_common.build_service_settings("worker", allow_plaintext=True, shared_memory="off").device is None


def test_the_cpu_keeps_the_plain_views() -> None:
    flat = build_flat_model(tiny_model(), CPU)
    assert type(flat) is FlatModel
    assert flat.device_params is flat.params and flat.device_grads is flat.grads


# --- the staged buffers ---------------------------------------------------------------------


def test_staging_copies_and_computes_exactly_what_the_views_compute() -> None:
    viewed = FlatModel(tiny_model())
    staged = StagedFlatModel(tiny_model(), CPU)  # the accelerator's path, copies forced on the CPU
    first = next(staged.model.parameters())
    # The model computes with its own buffer, not with the host buffer the links write.
    assert first.data_ptr() == staged.device_params.data_ptr() != staged.params.data_ptr()
    assert torch.equal(staged.params, viewed.params)
    gen = torch.Generator().manual_seed(7)
    for step in range(4):
        x, y = batch(seed=step)
        assert compute_gradient(staged, x, y) == compute_gradient(viewed, x, y)
        assert torch.equal(staged.grads, viewed.grads) and bool(staged.grads.any())
        # New parameters arrive in the host buffers, as the shard links write them.
        new = viewed.params - 0.1 * viewed.grads + 0.01 * torch.randn(viewed.params.shape, generator=gen)
        viewed.params.copy_(new)
        staged.params.copy_(new)
        assert not torch.equal(staged.device_params, staged.params)  # until the next forward copies them
    x, y = batch(n=40, seed=99)
    staged.to_device()
    assert evaluate(staged.model, tensor_batches(x, y)) == evaluate(viewed.model, tensor_batches(x, y))


def test_staging_leaves_the_host_buffers_alone_until_asked() -> None:
    staged = StagedFlatModel(tiny_model(), CPU)
    before = staged.grads.clone()
    staged.model(batch()[0]).sum().backward()
    assert torch.equal(staged.grads, before)  # the gradient is on the device only
    staged.grads_to_host()
    assert torch.equal(staged.grads, staged.device_grads) and bool(staged.grads.any())


def test_a_weighted_objective_trains_on_the_staged_path() -> None:
    model = nn.Linear(3, 2)
    weights = torch.tensor([1.0, 0.0])
    objective = Objective(ObjectiveKind.WEIGHTED_MSE, train_weight=weights, val_weight=weights, reference_loss=1.0)
    viewed, staged = FlatModel(copy.deepcopy(model)), StagedFlatModel(copy.deepcopy(model), CPU)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    on_device = objective.on(staged.device)
    assert compute_gradient(staged, x, y, on_device) == compute_gradient(viewed, x, y, objective)
    assert torch.equal(staged.grads, viewed.grads)


# --- mixed precision ------------------------------------------------------------------------


def _close_to_fp32(precision: str, rtol: float) -> None:
    reference, mixed = FlatModel(tiny_model()), FlatModel(tiny_model())
    amp = MixedPrecision(precision, CPU, mixed.model)
    x, y = batch()
    fp32_loss = compute_gradient(reference, x, y)
    loss = compute_gradient(mixed, x, y, precision=amp)
    assert mixed.grads.dtype == mixed.params.dtype == torch.float32
    assert bool(torch.isfinite(mixed.grads).all())
    assert loss == pytest.approx(fp32_loss, rel=rtol)
    assert not torch.equal(mixed.grads, reference.grads)  # autocast did compute in low precision
    torch.testing.assert_close(mixed.grads, reference.grads, rtol=rtol, atol=rtol)


def test_bf16_autocast_steps_on_the_cpu() -> None:
    _close_to_fp32("bf16", rtol=5e-2)


def test_fp16_steps_are_unscaled_before_they_are_pushed() -> None:
    _close_to_fp32("fp16", rtol=1e-2)


def test_an_fp16_overflow_pushes_zeros_and_lowers_the_scale() -> None:
    flat = FlatModel(tiny_model())
    amp = MixedPrecision("fp16", CPU, flat.model, init_scale=2.0**120)  # the scaled gradient overflows
    x, y = batch()
    loss = compute_gradient(flat, x, y, precision=amp)
    assert loss == pytest.approx(compute_gradient(FlatModel(tiny_model()), x, y), rel=1e-2)
    assert amp.skipped == 1
    assert not bool(flat.grads.any())  # zeros, never inf or NaN
    assert amp.scaler is not None and amp.scaler.get_scale() < 2.0**120
    # The scale keeps falling until a step fits; from then on the gradients are real.
    for _ in range(200):
        compute_gradient(flat, x, y, precision=amp)
        if flat.grads.any():
            break
    assert bool(flat.grads.any()) and bool(torch.isfinite(flat.grads).all())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_training_lowers_the_loss(precision: str) -> None:
    flat = FlatModel(tiny_model())
    amp = MixedPrecision(precision, CPU, flat.model)
    x, y = batch(n=64)
    losses = []
    for _ in range(30):
        losses.append(compute_gradient(flat, x, y, precision=amp))
        assert bool(torch.isfinite(flat.grads).all())
        flat.params.sub_(0.2 * flat.grads)  # the shard's SGD step
    assert losses[-1] < losses[0]


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^precision: must be one of \['bf16', 'fp16', 'fp32'\], got 'fp8'"):
        MixedPrecision("fp8", CPU, tiny_model())


FP16_STEP = """
import sys, torch
from tidal.core.precision import MixedPrecision
model = torch.nn.Linear(4, 2)
precision = MixedPrecision("fp16", torch.device("cpu"), model)
with precision.autocast():
    loss = model(torch.randn(8, 4)).float().pow(2).mean()
assert precision.backward(loss, model.weight.grad if model.weight.grad is not None else torch.zeros(1))
print(sorted(m for m in ("torch._dynamo", "sympy") if m in sys.modules))
"""


def test_an_fp16_worker_imports_no_torch_dynamo() -> None:
    # torch.optim's compile wrappers import torch._dynamo on first use: seconds at each fp16 job's
    # start (5 s on the GPU check's workers) for an optimizer that only hands GradScaler the parameters.
    out = subprocess.run([sys.executable, "-c", FP16_STEP], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
