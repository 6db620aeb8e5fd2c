"""Unit tests for tidal.core.shard_state.ShardState: the shard's domain without sockets.

The reference for every update is torch.optim run directly on plain tensors, so a
wrong mean, a double application or a lost optimizer state shows up as a mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import pytest
import torch

# isort: split
from tidal.core import push_memory as push_memory_module
from tidal.core.digests import values_digest
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError, NonFiniteGradientError
from tidal.core.optim import build_optimizer
from tidal.core.policy import ConsistencyPolicy
from tidal.core.push_outcomes import PushOutcome
from tidal.core.shard_map import ShardMap, TensorInfo, build_shard_map
from tidal.core.shard_state import ShardState
from tidal.core.spec import Mode, parse_job_spec

TENSORS = (
    TensorInfo("layer.weight", (3, 4), "float32"),
    TensorInfo("layer.bias", (3,), "float32"),
    TensorInfo("head.weight", (2, 3), "float32"),
)
TOTAL = sum(t.numel for t in TENSORS)
EPOCH = 7
ALL_MODES = ["sync", "ssp", "async", "local_sgd"]


def make_map(num_shards: int = 1) -> ShardMap:
    return build_shard_map(TENSORS, num_shards)


def make_state(
    mode: str = "sync",
    workers: Sequence[str] = ("w0", "w1"),
    optimizer: dict[str, Any] | None = None,
    num_shards: int = 1,
    shard: int = 0,
    seed: int = 0,
    consistency: dict[str, Any] | None = None,
    policy: ConsistencyPolicy | None = None,
    steps: int = 100,
) -> tuple[ShardState, torch.Tensor]:
    spec = parse_job_spec(
        {
            "mode": mode,
            "steps": steps,
            "num_workers": len(workers),
            "num_shards": num_shards,
            "optimizer": optimizer or {"name": "sgd", "lr": 0.1},
            "consistency": consistency or {},
        }
    )
    shard_map = make_map(num_shards)
    start, end = shard_map.ranges[shard]
    full = torch.randn(TOTAL, generator=torch.Generator().manual_seed(seed))
    initial = full[start:end].clone()
    return ShardState(spec, shard, shard_map, initial, EPOCH, workers, policy=policy), initial


def grad_like(state: ShardState, seed: int) -> torch.Tensor:
    return torch.randn(state.numel, generator=torch.Generator().manual_seed(1000 + seed))


class Reference:
    """torch.optim on a plain copy of the slice, stepped by hand: the job's optimizer, or in
    local_sgd mode the outer SGD the spec describes (written out here, not taken from
    `build_shard_optimizer`)."""

    def __init__(self, state: ShardState, initial: torch.Tensor) -> None:
        self.param = initial.detach().clone().requires_grad_(True)
        spec = state.spec
        if spec.mode == Mode.LOCAL_SGD:
            c = spec.consistency
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                [self.param],
                lr=c.outer_lr,
                momentum=c.outer_momentum,
                nesterov=c.outer_nesterov and c.outer_momentum > 0,
            )
        else:
            self.optimizer = build_optimizer(spec.optimizer, [self.param])

    def step(self, grad: torch.Tensor) -> None:
        self.param.grad = grad.clone()
        self.optimizer.step()
        self.param.grad = None


def snapshot(state: ShardState) -> torch.Tensor:
    return state.params.detach().clone()


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


# --- construction ----------------------------------------------------------------------


def test_initial_slice_of_wrong_size_is_rejected() -> None:
    spec = parse_job_spec({})
    with pytest.raises(InvalidArgumentError, match="initial"):
        ShardState(spec, 0, make_map(), torch.zeros(TOTAL + 1), 1, ["w0"])
    with pytest.raises(InvalidArgumentError, match="initial"):
        ShardState(spec, 0, make_map(), torch.zeros(1, TOTAL), 1, ["w0"])


def test_state_does_not_alias_the_initial_tensor() -> None:
    state, initial = make_state(mode="async", workers=["w0"])
    before = initial.clone()
    state.push("w0", "p0", 0, EPOCH, grad_like(state, 0))
    assert torch.equal(initial, before)
    initial.add_(1.0)
    assert not torch.equal(state.params.detach(), initial)


def test_segments_come_from_the_shard_map() -> None:
    state, _ = make_state(num_shards=2, shard=1)
    assert state.segments == make_map(2).segments(1)
    start, end = make_map(2).ranges[1]
    assert state.numel == end - start


# --- sync ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "lr": 0.1},
        {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    ],
    ids=["plain", "momentum", "nesterov"],
)
def test_sync_two_workers_apply_the_mean_gradient_once_per_step(optimizer: dict[str, Any]) -> None:
    state, initial = make_state(optimizer=optimizer)
    ref = Reference(state, initial)
    for step in range(3):
        g0, g1 = grad_like(state, 2 * step), grad_like(state, 2 * step + 1)
        first = state.push("w0", f"w0-{step}", step, EPOCH, g0)
        assert first.outcome is PushOutcome.BUFFERED
        assert first.version == step
        assert first.serve_version == step + 1
        assert torch.equal(state.params.detach(), ref.param.detach()), "a buffered push must not move the params"
        second = state.push("w1", f"w1-{step}", step, EPOCH, g1)
        assert second.outcome is PushOutcome.APPLIED
        assert second.version == step + 1
        assert second.staleness == 0
        assert second.serve_version == step + 1
        ref.step((g0 + g1) / 2)
        torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    assert state.version == 3
    assert state.counters.updates_applied == 6  # one per push folded in
    assert state.counters.updates_rejected == 0
    assert state.counters.staleness.count == 6
    assert state.counters.staleness.maximum == 0


def test_sync_does_not_keep_a_reference_to_pushed_gradients() -> None:
    state, initial = make_state()
    ref = Reference(state, initial)
    g0, g1 = grad_like(state, 0), grad_like(state, 1)
    expected = (g0 + g1) / 2
    state.push("w0", "a", 0, EPOCH, g0)
    g0.fill_(1e6)  # the worker reuses its buffer
    state.push("w1", "b", 0, EPOCH, g1)
    ref.step(expected)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)


def test_sync_second_push_from_same_worker_is_refused_and_not_accumulated() -> None:
    state, initial = make_state()
    ref = Reference(state, initial)
    g0, g1 = grad_like(state, 0), grad_like(state, 1)
    state.push("w0", "a", 0, EPOCH, g0)
    with pytest.raises(FailedPreconditionError, match="w0"):
        state.push("w0", "a-again-new-id", 0, EPOCH, grad_like(state, 9))
    assert state.push("w1", "b", 0, EPOCH, g1).outcome is PushOutcome.APPLIED
    ref.step((g0 + g1) / 2)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)


def test_sync_retry_of_a_buffered_push_is_a_duplicate_not_an_error() -> None:
    state, initial = make_state()
    ref = Reference(state, initial)
    g0, g1 = grad_like(state, 0), grad_like(state, 1)
    state.push("w0", "a", 0, EPOCH, g0)
    retry = state.push("w0", "a", 0, EPOCH, g0)
    assert retry.outcome is PushOutcome.DUPLICATE
    assert retry.serve_version == 1
    assert state.push("w1", "b", 0, EPOCH, g1).outcome is PushOutcome.APPLIED
    ref.step((g0 + g1) / 2)  # the retry was not counted twice
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    assert state.counters.rejected == {"duplicate": 1}


def test_sync_a_worker_a_clock_behind_finishes_alone_once_the_other_is_done() -> None:
    """After a shard is restored from a checkpoint its workers can reach it a clock apart, so
    its barriers pair one worker's clock k with the other's k + 1. Once the worker ahead pushed
    its last clock it pushes no more: the one behind must not wait for it at its last step."""
    state, _ = make_state("sync")
    last = state.spec.target_version - 1
    push = state.push
    assert push("w0", "a1", 0, EPOCH, grad_like(state, 1), clock=last - 1).outcome is PushOutcome.BUFFERED
    assert push("w1", "b1", 0, EPOCH, grad_like(state, 2), clock=last - 2).outcome is PushOutcome.APPLIED
    assert push("w0", "a2", 1, EPOCH, grad_like(state, 3), clock=last).outcome is PushOutcome.BUFFERED
    assert push("w1", "b2", 1, EPOCH, grad_like(state, 4), clock=last - 1).outcome is PushOutcome.APPLIED
    before = state.params.detach().clone()
    result = push("w1", "b3", 2, EPOCH, grad_like(state, 5), clock=last)
    assert result.outcome is PushOutcome.APPLIED and state.version == 3
    # Its gradient alone: SGD with lr 0.1.
    torch.testing.assert_close(state.params.detach(), before - 0.1 * grad_like(state, 5))


@pytest.mark.parametrize("mode", ["ssp", "auto"])
def test_a_clock_a_worker_skipped_completes_without_it(mode: str) -> None:
    """A worker's clock follows the newest version any shard served it, so it can skip a clock
    on a shard that lags; having pushed a later clock it never pushes the skipped one, and the
    skipped clock must not wait for it (mode auto stalled like this, rarely, under a straggler)."""
    bound = {"staleness_bound": 1} if mode == "ssp" else {}
    state, _ = make_state(mode, workers=("w0", "w1", "w2"), consistency=bound)
    if mode == "auto":  # where the tuner may have moved it: bound 1, no backups
        state.policy.tuner.settings = replace(state.policy.tuner.settings, staleness_bound=1)
    assert state.push("w0", "a", 0, EPOCH, grad_like(state, 1), clock=0).outcome is PushOutcome.BUFFERED
    assert state.push("w1", "b", 0, EPOCH, grad_like(state, 2), clock=1).outcome is PushOutcome.BUFFERED
    assert state.version == 0
    result = state.push("w2", "c", 0, EPOCH, grad_like(state, 3), clock=0)
    assert result.outcome is PushOutcome.APPLIED and state.version == 1


def test_sync_with_backups_a_worker_past_the_last_clock_that_still_pushes_still_counts() -> None:
    """With backups a worker's clock can run ahead of its steps: counted as finished, it may
    still push, and its pushes must complete barriers (the other worker may be done)."""
    state, _ = make_state("sync", consistency={"backup_workers": 1})
    last = state.spec.target_version - 1
    assert state.push("w0", "a1", 0, EPOCH, grad_like(state, 1), clock=last).outcome is PushOutcome.APPLIED
    assert state.push("w1", "b1", 0, EPOCH, grad_like(state, 2), clock=last).outcome is PushOutcome.DROPPED_LATE
    assert state.push("w0", "a2", 1, EPOCH, grad_like(state, 3), clock=last + 1).outcome is PushOutcome.APPLIED
    assert state.version == 2


def test_sync_workers_at_the_same_last_clock_still_wait_for_each_other() -> None:
    state, _ = make_state("sync")
    last = state.spec.target_version - 1
    assert state.push("w0", "a", 0, EPOCH, grad_like(state, 1), clock=last).outcome is PushOutcome.BUFFERED
    assert state.version == 0
    assert state.push("w1", "b", 0, EPOCH, grad_like(state, 2), clock=last).outcome is PushOutcome.APPLIED


def test_sync_single_worker_equals_sequential_sgd() -> None:
    optimizer = {"name": "sgd", "lr": 0.05, "momentum": 0.8, "weight_decay": 0.001}
    state, initial = make_state(workers=["solo"], optimizer=optimizer)
    ref = Reference(state, initial)
    for step in range(6):
        g = grad_like(state, step)
        result = state.push("solo", f"p{step}", step, EPOCH, g)
        assert result.outcome is PushOutcome.APPLIED
        assert result.version == step + 1
        ref.step(g)
    assert state.version == 6
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)


def test_sync_late_push_is_dropped_without_touching_params() -> None:
    state, _ = make_state(workers=["w0", "w1"])
    state.push("w0", "a", 0, EPOCH, grad_like(state, 0))
    # w1 leaves: the step completes with w0's gradient alone.
    assert state.set_membership(EPOCH + 1, ["w0"]) == (0,)
    assert state.version == 1
    # w1 rejoins and delivers its gradient for version 0, which was applied without it.
    state.set_membership(EPOCH + 2, ["w0", "w1"])
    before = snapshot(state)
    late = state.push("w1", "b", 0, EPOCH + 2, grad_like(state, 1))
    assert late.outcome is PushOutcome.DROPPED_LATE
    assert late.version == 1
    assert late.serve_version == 1
    assert late.staleness == 1
    assert bits_equal(state.params.detach(), before)
    assert state.counters.rejected == {"late": 1}
    assert state.counters.updates_rejected == 1


@pytest.mark.parametrize("mode", ["sync", "ssp"])
def test_member_leaving_mid_step_completes_with_the_gradients_received(mode: str) -> None:
    state, initial = make_state(mode=mode, workers=["w0", "w1", "w2"])
    ref = Reference(state, initial)
    g0, g1 = grad_like(state, 0), grad_like(state, 1)
    assert state.push("w0", "a", 0, EPOCH, g0).outcome is PushOutcome.BUFFERED
    assert state.push("w1", "b", 0, EPOCH, g1).outcome is PushOutcome.BUFFERED
    assert state.set_membership(EPOCH + 1, ["w0", "w1"]) == (0, 0)
    ref.step((g0 + g1) / 2)  # the mean over the two received, not over three
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    assert state.version == 1
    assert state.counters.updates_applied == 2
    # The next step waits for the two remaining members only.
    g0, g1 = grad_like(state, 2), grad_like(state, 3)
    assert state.push("w0", "c", 1, EPOCH + 1, g0).outcome is PushOutcome.BUFFERED
    assert state.push("w1", "d", 1, EPOCH + 1, g1).outcome is PushOutcome.APPLIED
    ref.step((g0 + g1) / 2)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["sync", "ssp"])
def test_membership_change_that_leaves_a_member_missing_does_not_step(mode: str) -> None:
    state, initial = make_state(mode=mode, workers=["w0", "w1", "w2"])
    ref = Reference(state, initial)
    g0, g1, g2 = (grad_like(state, i) for i in range(3))
    state.push("w0", "a", 0, EPOCH, g0)
    state.push("w2", "c", 0, EPOCH, g2)
    # w2 leaves after pushing; w1 is still missing.
    assert state.set_membership(EPOCH + 1, ["w0", "w1"]) == ()
    assert state.version == 0
    assert state.push("w1", "b", 0, EPOCH + 1, g1).outcome is PushOutcome.APPLIED
    # Gradients already buffered are kept, so w2's counts.
    ref.step((g0 + g1 + g2) / 3)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)


def test_set_membership_with_an_older_epoch_is_refused() -> None:
    state, _ = make_state()
    with pytest.raises(FailedPreconditionError, match="membership_epoch"):
        state.set_membership(EPOCH - 1, ["w0"])
    assert state.membership_epoch == EPOCH
    assert state.members == frozenset({"w0", "w1"})


def test_set_membership_with_the_same_epoch_is_accepted() -> None:
    state, _ = make_state()
    assert state.set_membership(EPOCH, ["w0", "w1"]) == ()
    assert state.membership_epoch == EPOCH


def test_set_membership_to_nobody_never_steps() -> None:
    state, _ = make_state()
    state.push("w0", "a", 0, EPOCH, grad_like(state, 0))
    assert state.set_membership(EPOCH + 1, []) == ()
    assert state.version == 0


def test_pushes_from_before_a_readmission_are_refused() -> None:
    # w0 is dropped and admitted again: what it sent under its old admission is fenced off.
    state, _ = make_state()
    state.set_membership(EPOCH + 1, ["w1"])
    state.set_membership(EPOCH + 2, ["w0", "w1"])
    with pytest.raises(FailedPreconditionError, match=r"membership_epoch.*predates"):
        state.push("w0", "a", 0, EPOCH, grad_like(state, 0))
    with pytest.raises(FailedPreconditionError, match=r"membership_epoch.*predates"):
        state.push("w0", "a", 0, EPOCH + 1, grad_like(state, 0))


def test_a_survivor_push_from_before_an_unrelated_change_is_accepted() -> None:
    # w1 was a member all along: its push in flight while w2 left still counts.
    state, _ = make_state(workers=["w0", "w1", "w2"])
    state.set_membership(EPOCH + 1, ["w0", "w1"])
    assert state.push("w1", "b", 0, EPOCH, grad_like(state, 1)).outcome is PushOutcome.BUFFERED


# --- async -----------------------------------------------------------------------------


def test_async_applies_every_push_and_records_staleness() -> None:
    optimizer = {"name": "sgd", "lr": 0.1, "momentum": 0.5}
    state, initial = make_state(mode="async", optimizer=optimizer)
    ref = Reference(state, initial)
    pushes = [("w0", 0), ("w1", 0), ("w0", 1), ("w1", 1), ("w1", 4)]
    expected_staleness = [0, 1, 1, 2, 0]
    for i, (worker, base) in enumerate(pushes):
        g = grad_like(state, i)
        result = state.push(worker, f"p{i}", base, EPOCH, g)
        ref.step(g)
        assert result.outcome is PushOutcome.APPLIED
        assert result.version == i + 1
        assert result.staleness == expected_staleness[i]
        assert result.serve_version == max(i + 1, base + 1)
        torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    stats = state.counters.staleness
    assert state.counters.updates_applied == 5
    assert stats.count == 5
    assert stats.total == 4
    assert stats.maximum == 2
    assert stats.histogram == {0: 2, 1: 2, 2: 1}
    assert stats.mean == pytest.approx(0.8)


def test_async_push_ahead_of_the_shard_is_invalid_and_changes_nothing() -> None:
    state, _ = make_state(mode="async")
    before = snapshot(state)
    with pytest.raises(InvalidArgumentError, match=r"push\.base_version"):
        state.push("w0", "a", 1, EPOCH, grad_like(state, 0))
    assert state.version == 0
    assert bits_equal(state.params.detach(), before)
    # The refused push id is not remembered: a corrected push with it is applied.
    assert state.push("w0", "a", 0, EPOCH, grad_like(state, 0)).outcome is PushOutcome.APPLIED


@pytest.mark.parametrize("mode", ALL_MODES)
def test_duplicate_push_id_is_reported_and_leaves_params_unchanged(mode: str) -> None:
    state, _ = make_state(mode=mode, workers=["w0"])
    first = state.push("w0", "same", 0, EPOCH, grad_like(state, 0))
    assert first.outcome is PushOutcome.APPLIED
    before = snapshot(state)
    again = state.push("w0", "same", 1, EPOCH, grad_like(state, 1))
    assert again.outcome is PushOutcome.DUPLICATE
    assert again.version == 1
    assert again.serve_version == first.serve_version
    assert again.staleness == first.staleness
    assert bits_equal(state.params.detach(), before)
    assert state.version == 1
    assert state.counters.updates_applied == 1
    assert state.counters.rejected == {"duplicate": 1}


def test_push_id_memory_is_bounded_oldest_first_per_member(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(push_memory_module, "PUSH_IDS_PER_MEMBER", 2)
    state, _ = make_state(mode="async", workers=["w0", "w1"])
    state.push("w1", "kept", 0, EPOCH, grad_like(state, 0))
    for i, pid in enumerate(["a", "b", "c"]):
        state.push("w0", pid, i + 1, EPOCH, grad_like(state, i))
    assert state.push("w0", "c", 4, EPOCH, grad_like(state, 3)).outcome is PushOutcome.DUPLICATE
    assert state.push("w0", "a", 4, EPOCH, grad_like(state, 3)).outcome is PushOutcome.APPLIED
    # w0's pushes evicted only w0's own ids.
    assert state.push("w1", "kept", 6, EPOCH, grad_like(state, 0)).outcome is PushOutcome.DUPLICATE


def test_another_members_push_id_changes_nothing_for_that_member() -> None:
    # The attack: w1 pushes late under w0's next push id; w0's real push must still be applied.
    state, _ = make_state(mode="sync", workers=["w0", "w1"])
    state.push("w0", "w0:0", 0, EPOCH, grad_like(state, 0))
    state.push("w1", "w1:0", 0, EPOCH, grad_like(state, 1))
    assert state.version == 1
    forged = state.push("w1", "w0:1", 0, EPOCH, grad_like(state, 2))
    assert forged.outcome is PushOutcome.DROPPED_LATE
    real = state.push("w0", "w0:1", 1, EPOCH, grad_like(state, 3))
    assert real.outcome is PushOutcome.BUFFERED
    assert state.push("w1", "w1:1", 1, EPOCH, grad_like(state, 4)).outcome is PushOutcome.APPLIED
    assert state.version == 2
    assert state.counters.updates_applied == 4


def test_a_dropped_push_is_not_remembered_and_a_resend_is_judged_again() -> None:
    state, _ = make_state(mode="sync", workers=["w0", "w1"])
    state.push("w0", "w0:0", 0, EPOCH, grad_like(state, 0))
    state.push("w1", "w1:0", 0, EPOCH, grad_like(state, 1))
    late = state.push("w0", "w0:late", 0, EPOCH, grad_like(state, 2))
    assert late.outcome is PushOutcome.DROPPED_LATE
    again = state.push("w0", "w0:late", 0, EPOCH, grad_like(state, 2))
    assert again.outcome is PushOutcome.DROPPED_LATE
    assert state.counters.rejected == {"late": 2}
    assert [push_id for _, push_id, _ in state.recent_pushes()] == ["w0:0", "w1:0"]


def test_a_late_push_under_a_members_own_future_id_does_not_swallow_its_real_push() -> None:
    # A second holder of w0's credential speaks as w0: what it cannot get taken leaves no trace.
    state, _ = make_state(mode="sync", workers=["w0", "w1"])
    state.push("w0", "w0:0", 0, EPOCH, grad_like(state, 0))
    state.push("w1", "w1:0", 0, EPOCH, grad_like(state, 1))
    assert state.push("w0", "w0:1", 0, EPOCH, grad_like(state, 2)).outcome is PushOutcome.DROPPED_LATE
    assert state.push("w0", "w0:1", 1, EPOCH, grad_like(state, 3)).outcome is PushOutcome.BUFFERED
    assert state.push("w1", "w1:1", 1, EPOCH, grad_like(state, 4)).outcome is PushOutcome.APPLIED
    assert state.version == 2


def test_a_non_finite_gradient_under_a_used_push_id_is_refused_not_acked() -> None:
    state, _ = make_state(mode="async", workers=["w0"])
    state.push("w0", "w0:0", 0, EPOCH, grad_like(state, 0))
    before = snapshot(state)
    with pytest.raises(NonFiniteGradientError):
        state.push("w0", "w0:0", 0, EPOCH, torch.full_like(state.params.detach(), float("nan")))
    assert bits_equal(state.params.detach(), before)


def test_an_overlong_push_id_is_refused() -> None:
    state, _ = make_state(mode="async", workers=["w0"])
    with pytest.raises(InvalidArgumentError, match=r"push\.push_id: 257 characters"):
        state.push("w0", "x" * 257, 0, EPOCH, grad_like(state, 0))


# --- rejected pushes -------------------------------------------------------------------


def _rejected_push_cases() -> Iterable[tuple[str, dict[str, Any], type[Exception], str]]:
    yield "unknown worker", {"worker_id": "intruder"}, FailedPreconditionError, "worker_id"
    yield "old epoch", {"membership_epoch": EPOCH - 1}, FailedPreconditionError, "membership_epoch"
    yield "newer epoch", {"membership_epoch": EPOCH + 1}, FailedPreconditionError, "membership_epoch"
    yield "empty push id", {"push_id": ""}, InvalidArgumentError, "push_id"
    yield "negative base", {"base_version": -1}, InvalidArgumentError, "base_version"
    yield "too short", {"grad": torch.zeros(TOTAL - 1)}, InvalidArgumentError, "push.chunks"
    yield "too long", {"grad": torch.zeros(TOTAL + 1)}, InvalidArgumentError, "push.chunks"
    yield "2-d", {"grad": torch.zeros(1, TOTAL)}, InvalidArgumentError, "push.chunks"
    yield "float64", {"grad": torch.zeros(TOTAL, dtype=torch.float64)}, InvalidArgumentError, "push.chunks"
    yield (
        "nan",
        {"grad": torch.zeros(TOTAL).index_fill(0, torch.tensor([3]), float("nan"))},
        InvalidArgumentError,
        "NaN",
    )
    yield (
        "inf",
        {"grad": torch.zeros(TOTAL).index_fill(0, torch.tensor([0]), float("inf"))},
        InvalidArgumentError,
        "Inf",
    )
    yield "-inf", {"grad": torch.full((TOTAL,), -float("inf"))}, InvalidArgumentError, "Inf"


REJECTED_CASES = list(_rejected_push_cases())


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize(
    ("overrides", "error", "needle"),
    [c[1:] for c in REJECTED_CASES],
    ids=[c[0] for c in REJECTED_CASES],
)
def test_rejected_push_raises_and_leaves_the_shard_bit_for_bit_unchanged(
    mode: str, overrides: dict[str, Any], error: type[Exception], needle: str
) -> None:
    state, _ = make_state(mode=mode, workers=["w0"])
    before = snapshot(state)
    kwargs = {
        "worker_id": "w0",
        "push_id": "p",
        "base_version": 0,
        "membership_epoch": EPOCH,
        "grad": grad_like(state, 0),
        **overrides,
    }
    with pytest.raises(error, match=needle):
        state.push(**kwargs)
    assert bits_equal(state.params.detach(), before)
    assert state.version == 0
    assert state.counters.updates_applied == 0
    # Nothing was buffered or remembered: a valid push with the same id now applies alone.
    g = grad_like(state, 5)
    ref = Reference(state, before)
    assert state.push("w0", "p", 0, EPOCH, g).outcome is PushOutcome.APPLIED
    ref.step(g)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)


def test_non_finite_gradient_is_counted_and_does_not_poison_the_step() -> None:
    state, initial = make_state()
    ref = Reference(state, initial)
    bad = grad_like(state, 0)
    bad[2] = float("nan")
    with pytest.raises(InvalidArgumentError, match="NaN or Inf"):
        state.push("w0", "bad", 0, EPOCH, bad)
    assert state.counters.rejected == {"non_finite": 1}
    g0, g1 = grad_like(state, 1), grad_like(state, 2)
    assert state.push("w0", "good", 0, EPOCH, g0).outcome is PushOutcome.BUFFERED
    assert state.push("w1", "other", 0, EPOCH, g1).outcome is PushOutcome.APPLIED
    ref.step((g0 + g1) / 2)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    assert bool(torch.isfinite(state.params).all())


# --- optimizers on a flat slice -------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        {"name": "adam", "lr": 0.01},
        {"name": "adam", "lr": 0.01, "betas": [0.8, 0.99], "weight_decay": 0.1, "eps": 1e-6},
        {"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
        {"name": "adagrad", "lr": 0.1},
        {"name": "adagrad", "lr": 0.1, "weight_decay": 0.01},
    ],
    ids=["sgd-nesterov", "adam", "adam-wd", "adamw", "adagrad", "adagrad-wd"],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_optimizer_on_flat_slices_matches_torch_optim_on_the_model_tensors(
    optimizer: dict[str, Any], mode: str
) -> None:
    num_shards = 2
    shard_map = make_map(num_shards)
    # The tensors are split across the two shards (one of them mid-tensor).
    assert any(s.tensor_offset > 0 for s in shard_map.segments(1))
    states = [
        make_state(mode=mode, workers=["w0"], optimizer=optimizer, num_shards=num_shards, shard=i)[0]
        for i in range(num_shards)
    ]
    full = torch.randn(TOTAL, generator=torch.Generator().manual_seed(0))
    # The reference: the unflattened model tensors with one torch.optim optimizer.
    tensors, offset = [], 0
    for info in TENSORS:
        tensors.append(full[offset : offset + info.numel].reshape(info.shape).clone().requires_grad_(True))
        offset += info.numel
    ref_opt = build_optimizer(states[0].spec.optimizer, tensors)
    gen = torch.Generator().manual_seed(42)
    for step in range(5):
        flat_grad = torch.randn(TOTAL, generator=gen)
        for i, state in enumerate(states):
            start, end = shard_map.ranges[i]
            result = state.push("w0", f"s{i}-{step}", step, EPOCH, flat_grad[start:end].clone())
            assert result.outcome is PushOutcome.APPLIED
        offset = 0
        for t in tensors:
            t.grad = flat_grad[offset : offset + t.numel()].reshape(t.shape).clone()
            offset += t.numel()
        ref_opt.step()
    got = torch.cat([s.params.detach() for s in states])
    want = torch.cat([t.detach().reshape(-1) for t in tensors])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert all(s.version == 5 for s in states)


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"name": "adam", "lr": 0.01, "weight_decay": 0.1},
        {"name": "adagrad", "lr": 0.1, "weight_decay": 0.1},
    ],
    ids=["sgd", "adam", "adagrad"],
)
@pytest.mark.parametrize(
    ("mode", "workers", "consistency"),
    [
        ("sync", ["w0"], {}),
        ("sync", ["w0", "w1"], {}),
        ("sync", ["w0", "w1", "w2"], {"backup_workers": 1}),
        ("ssp", ["w0", "w1"], {}),
        ("async", ["w0", "w1"], {}),
        ("async", ["w0", "w1"], {"staleness_lr": "inverse", "compensation": "dc_asgd"}),
        ("local_sgd", ["w0", "w1"], {}),
    ],
    ids=["sync-1", "sync-2", "sync-backup", "ssp", "async", "async-dc-inverse", "local_sgd"],
)
def test_push_never_modifies_the_callers_gradient(
    optimizer: dict[str, Any], mode: str, workers: list[str], consistency: dict[str, Any]
) -> None:
    state, _ = make_state(mode=mode, workers=workers, optimizer=optimizer, consistency=consistency)
    asynchronous = mode == "async"
    for step in range(3):
        for i, worker in enumerate(workers):
            state.served(worker)
            g = grad_like(state, 10 * step + i)
            kept = g.clone()
            # Async workers all train on the version of the step's start: staleness grows.
            state.push(worker, f"{worker}-{step}", step * len(workers) if asynchronous else step, EPOCH, g)
            assert bits_equal(g, kept), "the worker's gradient buffer was written to"
    assert state.version == (3 * len(workers) if asynchronous else 3)


def test_push_result_lists_the_staleness_of_every_gradient_it_folded_in() -> None:
    state, _ = make_state(workers=["w0", "w1"])
    assert state.push("w0", "a", 0, EPOCH, grad_like(state, 0)).folded == ()
    assert state.push("w1", "b", 0, EPOCH, grad_like(state, 1)).folded == (0, 0)
    async_state, _ = make_state(workers=["w0", "w1"], mode="async")
    async_state.push("w0", "a", 0, EPOCH, grad_like(async_state, 0))
    assert async_state.push("w1", "b", 0, EPOCH, grad_like(async_state, 1)).folded == (1,)


# --- sync with backup workers ------------------------------------------------------------


def test_sync_backup_worker_step_applies_the_mean_of_the_first_gradients_and_drops_the_last() -> None:
    optimizer = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    workers = ["w0", "w1", "w2"]
    state, initial = make_state(workers=workers, optimizer=optimizer, consistency={"backup_workers": 1})
    ref = Reference(state, initial)
    for step in range(3):
        # A different worker is the slow one each step.
        order = workers[step:] + workers[:step]
        g = {w: grad_like(state, 10 * step + i) for i, w in enumerate(order)}
        first = state.push(order[0], f"{order[0]}-{step}", step, EPOCH, g[order[0]])
        assert first.outcome is PushOutcome.BUFFERED
        assert first.serve_version == step + 1
        assert torch.equal(state.params.detach(), ref.param.detach()), "one gradient of two must not step"
        second = state.push(order[1], f"{order[1]}-{step}", step, EPOCH, g[order[1]])
        assert second.outcome is PushOutcome.APPLIED
        assert second.version == step + 1
        assert second.folded == (0, 0)
        ref.step((g[order[0]] + g[order[1]]) / 2)
        torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
        before = snapshot(state)
        third = state.push(order[2], f"{order[2]}-{step}", step, EPOCH, g[order[2]])
        assert third.outcome is PushOutcome.DROPPED_LATE
        assert third.version == step + 1
        assert third.staleness == 1
        assert third.folded == ()
        # The dropped worker does not wait: it may train on the version already there.
        assert third.serve_version == state.version
        assert bits_equal(state.params.detach(), before)
        assert state.counters.rejected == {"late": step + 1}
    assert state.version == 3
    assert state.counters.updates_applied == 6
    assert state.counters.updates_rejected == 3


def test_sync_backup_worker_gradients_of_departed_members_do_not_count_towards_the_quorum() -> None:
    state, initial = make_state(workers=["w0", "w1", "w2"], consistency={"backup_workers": 1})
    ref = Reference(state, initial)
    g0, g1, g2 = (grad_like(state, i) for i in range(3))
    state.push("w2", "c", 0, EPOCH, g2)
    # w2 leaves after pushing: its gradient is kept, but 2 - 1 = 1 gradient of a member is needed.
    assert state.set_membership(EPOCH + 1, ["w0", "w1"]) == ()
    assert state.version == 0
    assert state.push("w0", "a", 0, EPOCH + 1, g0).outcome is PushOutcome.APPLIED
    ref.step((g0 + g2) / 2)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    assert state.push("w1", "b", 0, EPOCH + 1, g1).outcome is PushOutcome.DROPPED_LATE


# --- ssp -------------------------------------------------------------------------------


def test_ssp_fast_worker_runs_ahead_by_the_bound_and_clocks_apply_in_order() -> None:
    # Momentum makes the order of the steps matter.
    optimizer = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    state, initial = make_state(mode="ssp", workers=["fast", "slow"], optimizer=optimizer)
    assert state.spec.consistency.staleness_bound == 2
    ref = Reference(state, initial)
    gf = [grad_like(state, c) for c in range(3)]
    gs = [grad_like(state, 10 + c) for c in range(3)]
    for clock in range(3):
        # The fast worker keeps training on version 0.
        result = state.push("fast", f"fast:{clock}", 0, EPOCH, gf[clock], clock=clock)
        assert result.outcome is PushOutcome.BUFFERED
        assert result.version == 0
        assert result.staleness == 0
        assert result.serve_version == max(0, clock + 1 - 2)
        assert bits_equal(state.params.detach(), initial)
    # Clock 3 from version 0 would break the bound: refused, and nothing changes.
    with pytest.raises(InvalidArgumentError, match=r"push\.clock"):
        state.push("fast", "fast:3", 0, EPOCH, grad_like(state, 3), clock=3)
    assert bits_equal(state.params.detach(), initial)
    assert state.version == 0
    assert set(state.view().buffered) == {0, 1, 2}
    # Clock 0 completes once the slow worker pushed it: the mean of both gradients.
    result = state.push("slow", "slow:0", 0, EPOCH, gs[0], clock=0)
    assert result.outcome is PushOutcome.APPLIED
    assert result.version == 1
    assert result.folded == (0, 0)
    ref.step((gf[0] + gs[0]) / 2)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    # Clock 1: the fast worker's gradient came from version 0, the slow one's from version 1.
    result = state.push("slow", "slow:1", 1, EPOCH, gs[1], clock=1)
    assert result.outcome is PushOutcome.APPLIED
    assert result.version == 2
    assert sorted(result.folded) == [0, 1]
    ref.step((gf[1] + gs[1]) / 2)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    result = state.push("slow", "slow:2", 2, EPOCH, gs[2], clock=2)
    assert result.version == 3
    assert sorted(result.folded) == [0, 2]
    ref.step((gf[2] + gs[2]) / 2)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    assert state.view().buffered == {}
    assert state.counters.updates_applied == 6
    assert state.counters.staleness.maximum == 2
    assert state.counters.updates_rejected == 0


def test_ssp_buffers_completed_by_a_departure_apply_in_clock_order() -> None:
    optimizer = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    state, initial = make_state(mode="ssp", workers=["fast", "slow"], optimizer=optimizer)
    ref, reversed_ref = Reference(state, initial), Reference(state, initial)
    gf = [grad_like(state, c) for c in range(3)]
    gs0 = grad_like(state, 10)
    for clock in range(3):
        state.push("fast", f"fast:{clock}", 0, EPOCH, gf[clock], clock=clock)
    state.push("slow", "slow:0", 0, EPOCH, gs0, clock=0)
    assert state.version == 1
    # The slow worker leaves: clocks 1 and 2 are complete with the fast worker's gradients.
    assert state.set_membership(EPOCH + 1, ["fast"]) == (1, 2)
    assert state.version == 3
    for g in [(gf[0] + gs0) / 2, gf[1], gf[2]]:
        ref.step(g)
    for g in [(gf[0] + gs0) / 2, gf[2], gf[1]]:
        reversed_ref.step(g)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    assert not torch.allclose(state.params.detach(), reversed_ref.param.detach(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("bound", "base", "clock"), [(2, 0, 3), (0, 0, 1), (1, 0, 2), (2, 1, 0)])
def test_ssp_push_outside_the_bound_is_invalid_and_changes_nothing(bound: int, base: int, clock: int) -> None:
    state, _ = make_state(mode="ssp", workers=["w0", "w1"], consistency={"staleness_bound": bound})
    # Bring the shard to version 1 so that base 1 is legal.
    state.push("w0", "a0", 0, EPOCH, grad_like(state, 0))
    state.push("w1", "b0", 0, EPOCH, grad_like(state, 1))
    before = snapshot(state)
    with pytest.raises(InvalidArgumentError, match=r"push\.clock"):
        state.push("w0", "bad", base, EPOCH, grad_like(state, 2), clock=clock)
    assert bits_equal(state.params.detach(), before)
    assert state.version == 1
    assert state.view().buffered == {}
    # The refused push id is not remembered.
    assert state.push("w0", "bad", 1, EPOCH, grad_like(state, 2), clock=1).outcome is PushOutcome.BUFFERED


# --- async options -----------------------------------------------------------------------


def _advance(state: ShardState, worker: str, versions: int) -> None:
    """`worker` pushes fresh gradients until the shard is `versions` further."""
    for _ in range(versions):
        state.push(worker, f"{worker}-{state.version}", state.version, EPOCH, grad_like(state, 100 + state.version))


def test_async_max_staleness_refuses_staler_gradients_without_touching_params() -> None:
    state, _ = make_state(mode="async", consistency={"max_staleness": 1})
    _advance(state, "w1", 2)
    before = snapshot(state)
    stale = state.push("w0", "old", 0, EPOCH, grad_like(state, 0))
    assert stale.outcome is PushOutcome.REJECTED_STALE
    assert stale.staleness == 2
    assert stale.version == 2
    assert stale.folded == ()
    assert stale.serve_version == 2  # the current version: no wait
    assert bits_equal(state.params.detach(), before)
    assert state.counters.rejected == {"stale": 1}
    assert state.counters.updates_applied == 2
    # Staleness 1 is within the bound.
    assert state.push("w0", "ok", 1, EPOCH, grad_like(state, 1)).outcome is PushOutcome.APPLIED
    assert state.counters.updates_applied == 3


@pytest.mark.parametrize(("staleness", "scale"), [(0, 1.0), (1, 1.0), (2, 1 / 2), (3, 1 / 3), (5, 1 / 5)])
def test_async_inverse_staleness_lr_divides_the_step_by_the_staleness(staleness: int, scale: float) -> None:
    lr = 0.1
    state, _ = make_state(mode="async", optimizer={"name": "sgd", "lr": lr}, consistency={"staleness_lr": "inverse"})
    _advance(state, "w1", staleness)
    before = snapshot(state)
    g = grad_like(state, 0)
    result = state.push("w0", "p", 0, EPOCH, g)
    assert result.outcome is PushOutcome.APPLIED
    assert result.staleness == staleness
    torch.testing.assert_close(before - state.params.detach(), lr * scale * g, rtol=0, atol=1e-6)
    # The learning rate is back for the next, fresh gradient.
    assert state.optimizer.param_groups[0]["lr"] == lr
    before = snapshot(state)
    g = grad_like(state, 1)
    state.push("w1", "fresh", state.version, EPOCH, g)
    torch.testing.assert_close(before - state.params.detach(), lr * g, rtol=0, atol=1e-6)


def test_async_without_inverse_staleness_lr_takes_the_full_step() -> None:
    lr = 0.1
    state, _ = make_state(mode="async", optimizer={"name": "sgd", "lr": lr})
    _advance(state, "w1", 3)
    before = snapshot(state)
    g = grad_like(state, 0)
    assert state.push("w0", "p", 0, EPOCH, g).staleness == 3
    torch.testing.assert_close(before - state.params.detach(), lr * g, rtol=0, atol=1e-6)


def test_async_dc_asgd_compensates_for_the_updates_since_the_worker_was_served() -> None:
    lr, lam = 0.1, 0.5
    state, _ = make_state(
        mode="async",
        workers=["A", "B"],
        optimizer={"name": "sgd", "lr": lr},
        consistency={"compensation": "dc_asgd", "dc_lambda": lam},
    )
    assert state.compensates
    state.served("A")
    w_served = snapshot(state)
    state.served("B")
    # B's gradient: nothing happened since B was served, so it is applied as is.
    g_b = grad_like(state, 1)
    assert state.push("B", "b", 0, EPOCH, g_b).staleness == 0
    torch.testing.assert_close(state.params.detach(), w_served - lr * g_b, rtol=0, atol=1e-6)
    w_now = snapshot(state)
    g_a = grad_like(state, 0)
    result = state.push("A", "a", 0, EPOCH, g_a)
    assert result.outcome is PushOutcome.APPLIED
    assert result.staleness == 1
    compensated = g_a + lam * g_a * g_a * (w_now - w_served)
    torch.testing.assert_close(state.params.detach(), w_now - lr * compensated, rtol=0, atol=1e-6)
    # The correction is not negligible: the uncompensated step would land elsewhere.
    assert not torch.allclose(state.params.detach(), w_now - lr * g_a, rtol=0, atol=1e-4)


def test_async_dc_asgd_uses_the_latest_parameters_served_to_the_worker() -> None:
    lr, lam = 0.1, 0.5
    state, _ = make_state(
        mode="async",
        workers=["A", "B"],
        optimizer={"name": "sgd", "lr": lr},
        consistency={"compensation": "dc_asgd", "dc_lambda": lam},
    )
    state.served("A")
    _advance(state, "B", 1)
    state.served("A")  # A pulled again: the first snapshot is replaced
    w_served = snapshot(state)
    _advance(state, "B", 1)
    w_now = snapshot(state)
    g = grad_like(state, 0)
    state.push("A", "a", 1, EPOCH, g)
    expected = w_now - lr * (g + lam * g * g * (w_now - w_served))
    torch.testing.assert_close(state.params.detach(), expected, rtol=0, atol=1e-6)


def test_async_dc_asgd_without_a_recorded_serve_applies_the_plain_gradient() -> None:
    lr = 0.1
    state, _ = make_state(
        mode="async", optimizer={"name": "sgd", "lr": lr}, consistency={"compensation": "dc_asgd", "dc_lambda": 1.0}
    )
    _advance(state, "w1", 2)
    before = snapshot(state)
    g = grad_like(state, 0)
    state.push("w0", "p", 0, EPOCH, g)
    torch.testing.assert_close(before - state.params.detach(), lr * g, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "consistency"),
    [("sync", {}), ("ssp", {}), ("async", {}), ("async", {"staleness_lr": "inverse"}), ("local_sgd", {})],
)
def test_only_dc_asgd_compensates(mode: str, consistency: dict[str, Any]) -> None:
    state, _ = make_state(mode=mode, consistency=consistency)
    assert not state.compensates


def test_async_dc_asgd_combined_with_inverse_staleness_lr() -> None:
    lr, lam = 0.1, 0.5
    state, _ = make_state(
        mode="async",
        optimizer={"name": "sgd", "lr": lr},
        consistency={"compensation": "dc_asgd", "dc_lambda": lam, "staleness_lr": "inverse"},
    )
    state.served("w0")
    w_served = snapshot(state)
    _advance(state, "w1", 2)
    w_now = snapshot(state)
    g = grad_like(state, 0)
    assert state.push("w0", "p", 0, EPOCH, g).staleness == 2
    expected = w_now - lr / 2 * (g + lam * g * g * (w_now - w_served))
    torch.testing.assert_close(state.params.detach(), expected, rtol=0, atol=1e-6)


# --- local_sgd ---------------------------------------------------------------------------


def test_local_sgd_applies_the_outer_nesterov_step_to_the_mean_delta() -> None:
    outer = {"sync_every": 4, "outer_lr": 0.7, "outer_momentum": 0.9, "outer_nesterov": True}
    state, initial = make_state(mode="local_sgd", optimizer={"name": "sgd", "lr": 0.01}, consistency=outer)
    # The reference, written out: torch's SGD with Nesterov momentum on a copy.
    param = initial.clone().requires_grad_(True)
    nesterov = torch.optim.SGD([param], lr=0.7, momentum=0.9, nesterov=True)
    plain_param = initial.clone().requires_grad_(True)
    plain = torch.optim.SGD([plain_param], lr=0.7, momentum=0.9)
    for round_ in range(2):
        d0, d1 = grad_like(state, 2 * round_), grad_like(state, 2 * round_ + 1)
        first = state.push("w0", f"w0:{round_}", round_, EPOCH, d0, clock=round_)
        assert first.outcome is PushOutcome.BUFFERED
        assert first.serve_version == round_ + 1
        second = state.push("w1", f"w1:{round_}", round_, EPOCH, d1, clock=round_)
        assert second.outcome is PushOutcome.APPLIED
        assert second.version == round_ + 1
        for p, opt in ((param, nesterov), (plain_param, plain)):
            p.grad = (d0 + d1) / 2
            opt.step()
            p.grad = None
        torch.testing.assert_close(state.params.detach(), param.detach(), rtol=0, atol=1e-6)
    # Nesterov is really on (plain momentum gives another point) and the inner lr is not used.
    assert not torch.allclose(state.params.detach(), plain_param.detach(), rtol=0, atol=1e-4)
    assert state.optimizer.param_groups[0]["lr"] == 0.7
    assert state.version == 2


def test_local_sgd_outer_momentum_without_nesterov_is_heavy_ball() -> None:
    outer = {"outer_lr": 0.5, "outer_momentum": 0.8, "outer_nesterov": False}
    state, initial = make_state(mode="local_sgd", consistency=outer)
    param = initial.clone().requires_grad_(True)
    opt = torch.optim.SGD([param], lr=0.5, momentum=0.8)
    for round_ in range(3):
        d0, d1 = grad_like(state, 2 * round_), grad_like(state, 2 * round_ + 1)
        state.push("w0", f"w0:{round_}", round_, EPOCH, d0, clock=round_)
        state.push("w1", f"w1:{round_}", round_, EPOCH, d1, clock=round_)
        param.grad = (d0 + d1) / 2
        opt.step()
    torch.testing.assert_close(state.params.detach(), param.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["sync", "ssp", "auto"])
def test_a_clock_past_the_jobs_last_is_counted_never_applied_and_served_at_once(mode: str) -> None:
    """A worker still short of the target on another shard pushes on to one that reached it."""
    state, _ = make_state(mode=mode, workers=["w0"], steps=2)
    for step in range(2):
        state.push("w0", f"p{step}", step, EPOCH, grad_like(state, step))
    assert state.version == 2
    before = snapshot(state)
    extra = state.push("w0", "p2", 2, EPOCH, grad_like(state, 2), clock=2)
    assert extra.outcome is PushOutcome.DROPPED_LATE
    assert extra.serve_version == 2  # not 3: no clock will ever make it
    assert bits_equal(state.params.detach(), before)
    assert state.version == 2 and state.counters.by_worker == {"w0": 3}


# --- initial parameters from the workers (a new job's shard builds no model) -------------------
def _uninitialized(mode: str = "sync") -> ShardState:
    spec = parse_job_spec({"mode": mode, "num_workers": 2, "num_shards": 1, "optimizer": {"name": "sgd", "lr": 0.1}})
    return ShardState(spec, 0, make_map(), None, EPOCH, ["w0", "w1"])


def test_a_new_jobs_shard_has_no_parameters_until_a_worker_sends_them() -> None:
    state = _uninitialized()
    assert (state.version, state.initialized) == (-1, False)
    with pytest.raises(FailedPreconditionError, match="no parameters yet"):
        state.push("w0", "w0:0", 0, EPOCH, torch.ones(TOTAL))
    values = torch.randn(TOTAL, generator=torch.Generator().manual_seed(3))
    assert state.initialize("w0", EPOCH, values) is True
    assert (state.version, state.initialized) == (0, True)
    assert torch.equal(state.params.detach(), values)
    # The other worker's equal values change nothing; then training goes on as usual.
    assert state.initialize("w1", EPOCH, values.clone()) is False
    assert state.push("w0", "w0:0", 0, EPOCH, torch.ones(TOTAL)).outcome is PushOutcome.BUFFERED


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (torch.zeros(TOTAL + 1), "values for a slice of"),
        (torch.zeros(1, TOTAL), "values for a slice of"),
        (torch.full((TOTAL,), float("nan")), "NaN or Inf"),
    ],
)
def test_initial_parameters_that_do_not_fit_the_slice_are_refused(values: torch.Tensor, message: str) -> None:
    state = _uninitialized()
    with pytest.raises(InvalidArgumentError, match=rf"^init\.chunks: .*{message}"):
        state.initialize("w0", EPOCH, values)
    assert (state.version, state.initialized) == (-1, False)


def test_initial_parameters_that_differ_from_those_held_are_refused_and_change_nothing() -> None:
    state = _uninitialized()
    values = torch.ones(TOTAL)
    state.initialize("w0", EPOCH, values)
    with pytest.raises(InvalidArgumentError, match="w1's initial parameters differ from those this shard started from"):
        state.initialize("w1", EPOCH, values * 2)
    assert torch.equal(state.params.detach(), values)


def test_only_members_of_the_job_may_send_initial_parameters() -> None:
    state = _uninitialized()
    with pytest.raises(FailedPreconditionError, match="not a member"):
        state.initialize("intruder", EPOCH, torch.ones(TOTAL))
    assert not state.initialized


def test_a_worker_whose_initial_slice_differs_from_the_one_the_shard_took_is_refused() -> None:
    state = _uninitialized()
    values = torch.randn(TOTAL, generator=torch.Generator().manual_seed(4))
    state.check_initial_digest("w1", "f" * 32)  # nothing taken yet: nothing to check against
    state.initialize("w0", EPOCH, values)
    state.check_initial_digest("w1", values_digest([values]))
    state.check_initial_digest("w1", "")  # a sender that says nothing is not checked
    with pytest.raises(InvalidArgumentError, match=r"^open\.init_digest: w1's initial parameters differ"):
        state.check_initial_digest("w1", values_digest([values + 1]))


def test_a_late_workers_initial_slice_is_checked_against_the_start_not_the_current_values() -> None:
    # Async: a worker that saw no parameters when it opened sends its slice after another worker
    # initialised the shard and pushed; equal initial values are a duplicate, not a conflict.
    state = _uninitialized("async")
    values = torch.randn(TOTAL, generator=torch.Generator().manual_seed(8))
    state.initialize("w0", EPOCH, values)
    state.push("w0", "w0:0", 0, EPOCH, torch.ones(TOTAL))
    assert state.version == 1
    assert state.initialize("w1", EPOCH, values.clone()) is False
    with pytest.raises(InvalidArgumentError, match="differ from those this shard started from"):
        state.initialize("w1", EPOCH, values + 1)
