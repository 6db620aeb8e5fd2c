"""Unit tests for tidal.core.flat, tidal.core.training and tidal.core.stragglers."""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

# isort: split
from tidal.core.flat import FlatModel
from tidal.core.spec import DelaySpec
from tidal.core.stragglers import StragglerProfile
from tidal.core.training import EvalResult, compute_gradient, evaluate, tensor_batches


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


# --- FlatModel -------------------------------------------------------------------------


def test_flat_buffers_hold_the_parameters_in_named_order() -> None:
    model = tiny_model()
    before = concat([p for _, p in model.named_parameters()])
    flat = FlatModel(model)
    assert flat.model is model
    assert torch.equal(flat.params, before)
    assert flat.params.shape == flat.grads.shape == (sum(p.numel() for p in model.parameters()),)
    assert flat.params.dtype == flat.grads.dtype == torch.float32
    assert not bool(flat.grads.any())


def test_parameters_are_views_of_the_flat_buffer() -> None:
    model = tiny_model()
    flat = FlatModel(model)
    x, _ = batch()
    # Writing the flat buffer changes the model.
    new = torch.linspace(-1, 1, flat.params.numel())
    flat.params.copy_(new)
    assert torch.equal(concat(list(model.parameters())), new)
    assert torch.equal(model[0].bias.detach(), new[20:25])
    reference = tiny_model()
    with torch.no_grad():
        for p, q in zip(reference.parameters(), model.parameters(), strict=True):
            p.copy_(q)
    assert torch.equal(model(x), reference(x))
    # And writing a parameter changes the flat buffer.
    with torch.no_grad():
        model[2].weight.fill_(7.0)
    offset = 4 * 5 + 5
    assert bool((flat.params[offset : offset + 15] == 7.0).all())


def test_backward_accumulates_into_the_flat_gradient_buffer() -> None:
    model = tiny_model()
    reference = copy.deepcopy(model)
    flat = FlatModel(model)
    grads_storage = flat.grads.data_ptr()
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(reference(x), y).backward()
    want = concat([p.grad for p in reference.parameters()])
    assert bool(flat.grads.any())
    torch.testing.assert_close(flat.grads, want)
    assert torch.equal(flat.grads, concat([p.grad for p in model.parameters()]))
    assert flat.grads.data_ptr() == grads_storage
    # A second backward accumulates, as autograd does.
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(flat.grads, 2 * want)


def test_zero_grad_keeps_the_gradient_views() -> None:
    model = tiny_model()
    flat = FlatModel(model)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    flat.zero_grad()
    assert not bool(flat.grads.any())
    for p in model.parameters():
        assert p.grad is not None
        assert not bool(p.grad.any())
    F.cross_entropy(model(x), y).backward()
    assert bool(flat.grads.any())
    assert torch.equal(flat.grads, concat([p.grad for p in model.parameters()]))


def test_flat_model_in_float64() -> None:
    model = tiny_model().double()
    flat = FlatModel(model)
    assert flat.params.dtype == flat.grads.dtype == torch.float64
    x, y = batch()
    F.cross_entropy(model(x.double()), y).backward()
    assert torch.equal(flat.grads, concat([p.grad for p in model.parameters()]))


# --- training --------------------------------------------------------------------------


def test_compute_gradient_matches_a_plain_backward_and_resets_old_gradients() -> None:
    model = tiny_model()
    reference = copy.deepcopy(model)
    flat = FlatModel(model)
    flat.grads.fill_(123.0)  # leftovers of a previous step
    model.eval()
    x, y = batch()
    loss = compute_gradient(flat, x, y)
    assert model.training
    ref_loss = F.cross_entropy(reference(x), y)
    ref_loss.backward()
    assert isinstance(loss, float)
    assert loss == pytest.approx(float(ref_loss.detach()), rel=1e-6)
    torch.testing.assert_close(flat.grads, concat([p.grad for p in reference.parameters()]))


def test_a_step_along_the_gradient_lowers_the_loss() -> None:
    flat = FlatModel(tiny_model())
    x, y = batch(64)
    first = compute_gradient(flat, x, y)
    with torch.no_grad():
        flat.params.sub_(0.1 * flat.grads)
    assert compute_gradient(flat, x, y) < first


def test_evaluate_computes_mean_loss_and_accuracy() -> None:
    model = tiny_model()
    x, y = batch(50)
    result = evaluate(model, tensor_batches(x, y))
    assert isinstance(result, EvalResult)
    assert not model.training
    with torch.no_grad():
        logits = model(x)
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert result.accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert 0.0 <= result.accuracy <= 1.0


def test_evaluate_is_independent_of_its_batch_size() -> None:
    model = tiny_model()
    x, y = batch(50)
    whole = evaluate(model, tensor_batches(x, y))
    pieces = evaluate(model, tensor_batches(x, y, batch_size=7))
    assert pieces.loss == pytest.approx(whole.loss, rel=1e-5)
    assert pieces.accuracy == whole.accuracy


def test_evaluate_perfect_and_empty() -> None:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2) * 50)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    result = evaluate(model, tensor_batches(x, y))
    assert result.accuracy == 1.0
    assert result.loss < 1e-6
    empty = evaluate(model, tensor_batches(x[:0], y[:0]))
    assert (empty.loss, empty.accuracy) == (0.0, 0.0)


def test_evaluate_does_not_build_a_graph() -> None:
    model = tiny_model()
    flat = FlatModel(model)
    x, y = batch()
    evaluate(model, tensor_batches(x, y))
    assert not bool(flat.grads.any())


# --- stragglers ------------------------------------------------------------------------


@pytest.mark.parametrize("busy", [0.0, 0.01, 2.5])
def test_no_slowdown_and_no_delay_add_nothing(busy: float) -> None:
    assert StragglerProfile().extra_seconds(busy) == 0.0
    assert StragglerProfile(1.0, DelaySpec(mean_s=0.0), seed=3).extra_seconds(busy) == 0.0


@pytest.mark.parametrize(("slowdown", "busy", "extra"), [(3.0, 0.5, 1.0), (3.0, 2.0, 4.0), (1.5, 2.0, 1.0)])
def test_slowdown_sleeps_slowdown_minus_one_busy_times(slowdown: float, busy: float, extra: float) -> None:
    profile = StragglerProfile(slowdown)
    assert profile.extra_seconds(busy) == pytest.approx(extra)
    # Total step time is slowdown times the busy time.
    assert busy + profile.extra_seconds(busy) == pytest.approx(slowdown * busy)


def test_constant_delay_adds_its_mean() -> None:
    profile = StragglerProfile(2.0, DelaySpec(distribution="constant", mean_s=0.25))
    assert profile.extra_seconds(1.0) == pytest.approx(1.25)
    assert profile.extra_seconds(0.0) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "delay",
    [
        DelaySpec(distribution="exponential", mean_s=0.2),
        DelaySpec(distribution="lognormal", mean_s=0.2, sigma=0.5),
        DelaySpec(distribution="lognormal", mean_s=0.2, sigma=1.0),
    ],
    ids=["exponential", "lognormal-0.5", "lognormal-1"],
)
def test_random_delays_are_seeded_and_have_the_requested_mean(delay: DelaySpec) -> None:
    draws = [StragglerProfile(1.0, delay, seed=7).extra_seconds(0.0) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2], "fresh profiles with one seed draw the same"
    a = StragglerProfile(1.0, delay, seed=7)
    b = StragglerProfile(1.0, delay, seed=7)
    seq_a = [a.extra_seconds(0.1) for _ in range(50)]
    assert seq_a == [b.extra_seconds(0.1) for _ in range(50)]
    other = StragglerProfile(1.0, delay, seed=8)
    assert seq_a != [other.extra_seconds(0.1) for _ in range(50)]
    assert len(set(seq_a)) == 50, "a random delay varies from step to step"
    assert all(d >= 0 for d in seq_a)
    profile = StragglerProfile(1.0, delay, seed=11)
    samples = [profile.extra_seconds(0.0) for _ in range(20_000)]
    assert statistics.fmean(samples) == pytest.approx(delay.mean_s, rel=0.08)


def test_random_delay_adds_to_the_slowdown() -> None:
    delay = DelaySpec(distribution="exponential", mean_s=0.2)
    with_slowdown = StragglerProfile(3.0, delay, seed=5)
    delay_only = StragglerProfile(1.0, delay, seed=5)
    for _ in range(10):
        assert with_slowdown.extra_seconds(0.5) == pytest.approx(1.0 + delay_only.extra_seconds(0.5))
