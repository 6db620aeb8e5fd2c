"""A sync step applied range by range (core/range_step.py, core/range_barrier.py): the same
parameters and optimizer state as the whole step, bit for bit on aligned ranges."""

from __future__ import annotations

import itertools

import pytest
import torch

from tidal.core import eager_optim
from tidal.core.errors import InvalidArgumentError
from tidal.core.range_barrier import MIN_RANGE_ELEMENTS, RangeBuffer
from tidal.core.range_step import ALIGN, RangeStepper

N = 100_003  # not a multiple of ALIGN: the last range ends unaligned, as a slice does


def _optimizer(name: str, p: torch.Tensor) -> torch.optim.Optimizer:
    if name == "sgd":
        return eager_optim.build(torch.optim.SGD, [p], lr=0.1, fused=True)
    if name == "momentum":
        return eager_optim.build(
            torch.optim.SGD, [p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, fused=True
        )
    if name == "adam":
        return eager_optim.build(torch.optim.Adam, [p], lr=0.01, weight_decay=0.01, fused=True)
    if name == "adamw":
        return eager_optim.build(torch.optim.AdamW, [p], lr=0.01, weight_decay=0.01, fused=True)
    return eager_optim.build(torch.optim.Adagrad, [p], lr=0.1, fused=True)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw", "adagrad"])
def test_aligned_ranges_give_the_whole_step_bit_for_bit(name: str) -> None:
    initial = torch.randn(N, generator=torch.Generator().manual_seed(1))
    whole, ranged = initial.clone().requires_grad_(True), initial.clone().requires_grad_(True)
    whole_opt, ranged_opt = _optimizer(name, whole), _optimizer(name, ranged)
    stepper = RangeStepper(ranged_opt, ranged)
    cuts = [0, 64 * 10, 64 * 700, 64 * 1200, N]
    for step in range(4):
        g = torch.randn(N, generator=torch.Generator().manual_seed(10 + step))
        whole.grad = g
        eager_optim.step(whole_opt)
        if not stepper.ready():  # the first step creates the state from a whole gradient
            assert step == 0
            ranged.grad = g
            eager_optim.step(ranged_opt)
            ranged.grad = None
            continue
        for lo, hi in itertools.pairwise(cuts):
            stepper.step(lo, hi, g[lo:hi].clone())
        stepper.finish_version()
    assert torch.equal(whole.detach(), ranged.detach())
    for key, value in whole_opt.state[whole].items():
        assert torch.equal(value, ranged_opt.state[ranged][key]), key


def test_sgd_without_momentum_keeps_no_state_and_is_ready_at_once() -> None:
    p = torch.zeros(8, requires_grad=True)
    assert RangeStepper(_optimizer("sgd", p), p).ready()
    q = torch.zeros(8, requires_grad=True)
    assert not RangeStepper(_optimizer("momentum", q), q).ready()


def _buffer(numel: int, workers: tuple[str, ...] = ("a", "b")) -> RangeBuffer:
    buffer = RangeBuffer(torch.empty(numel))
    for w in workers:
        buffer.join(w, f"{w}:1", 3, final=False)
    return buffer


def test_the_first_gradient_starts_the_sum_and_the_others_add_to_it() -> None:
    buffer = _buffer(10)
    buffer.add("a", 0, torch.full((6,), 1.0), "x")
    buffer.add("b", 0, torch.full((4,), 2.0), "x")
    buffer.add("b", 4, torch.full((6,), 2.0), "x")
    buffer.add("a", 6, torch.full((4,), 1.0), "x")
    assert torch.equal(buffer.total, torch.full((10,), 3.0))
    assert buffer.prefix == {"a": 10, "b": 10}


def test_a_resent_push_skips_what_arrived_and_a_gap_is_refused() -> None:
    buffer = _buffer(10)
    buffer.add("a", 0, torch.ones(6), "x")
    buffer.add("a", 0, torch.ones(8), "x")  # resent from the start after a reconnect
    assert buffer.prefix["a"] == 8
    assert torch.equal(buffer.total[:8], torch.ones(8))
    with pytest.raises(InvalidArgumentError, match=r"push.chunks\[3\]: starts at element 9 .* end at 8"):
        buffer.add("a", 9, torch.ones(1), "push.chunks[3]")


def test_ranges_complete_on_aligned_boundaries_and_only_when_worth_a_step() -> None:
    numel = MIN_RANGE_ELEMENTS * 2 + 5
    buffer = _buffer(numel)
    buffer.add("a", 0, torch.ones(MIN_RANGE_ELEMENTS + 100), "x")
    buffer.add("b", 0, torch.ones(MIN_RANGE_ELEMENTS - 1), "x")
    ready = buffer.complete_to({"a", "b"})
    assert ready % ALIGN == 0 and ready < MIN_RANGE_ELEMENTS and not buffer.due(ready)
    buffer.add("b", MIN_RANGE_ELEMENTS - 1, torch.ones(101), "x")
    ready = buffer.complete_to({"a", "b"})
    assert ready == MIN_RANGE_ELEMENTS + 64 and buffer.due(ready)
    assert buffer.complete_to(set()) == buffer.applied  # nobody to wait for: nothing completes


def test_a_worker_that_left_mid_push_counts_only_where_its_gradient_arrived() -> None:
    buffer = _buffer(100, ("a", "b", "gone"))
    buffer.add("gone", 0, torch.ones(30), "x")
    for w in ("a", "b"):
        buffer.add(w, 0, torch.ones(100), "x")
    assert buffer.pieces(0, 100) == [(0, 30, 3), (30, 100, 2)]
