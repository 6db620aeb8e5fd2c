"""Edge cases where consistency modes must coincide, checked through ShardState.

backup_workers 0 is plain sync, an SSP bound of 0 is BSP, and with a single worker every
mode is sequential SGD: in each case the parameters must be bit-identical, not merely close,
because the degenerate mode performs exactly the same floating-point operations.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

# isort: split
from tests.unit.test_shard_state import EPOCH, Reference, bits_equal, grad_like, make_state, snapshot
from tidal.core.errors import DeadlineExceededError
from tidal.core.optim import build_optimizer
from tidal.core.policy import StaleSynchronousPolicy, SyncPolicy
from tidal.core.push_outcomes import PushOutcome
from tidal.core.shard_state import ShardState
from tidal.shard.metrics import ShardMetrics
from tidal.shard.runtime import ShardRuntime

OPTIMIZER = {"name": "sgd", "lr": 0.05, "momentum": 0.8, "weight_decay": 0.001}
STEPS = 5


def _run_sync_like(state: ShardState, workers: list[str], steps: int) -> list[tuple[object, ...]]:
    """Every worker pushes a fresh gradient per step (the last one completes it); returns
    what each push reported."""
    results = []
    for step in range(steps):
        for i, worker in enumerate(workers):
            r = state.push(worker, f"{worker}:{step}", step, EPOCH, grad_like(state, 10 * step + i))
            results.append((r.outcome, r.version, r.staleness, r.serve_version, r.folded))
    return results


# --- degenerate options ----------------------------------------------------------------------


def test_zero_backup_workers_is_bit_identical_to_plain_sync() -> None:
    workers = ["w0", "w1", "w2"]
    with_option, initial = make_state(workers=workers, optimizer=OPTIMIZER, consistency={"backup_workers": 0})
    plain, plain_initial = make_state(workers=workers, optimizer=OPTIMIZER, policy=SyncPolicy())
    assert bits_equal(initial, plain_initial)
    assert isinstance(with_option.policy, SyncPolicy)
    assert with_option.policy.backup_workers == 0
    assert _run_sync_like(with_option, workers, STEPS) == _run_sync_like(plain, workers, STEPS)
    assert with_option.version == plain.version == STEPS
    assert bits_equal(with_option.params.detach(), plain.params.detach())


def test_ssp_bound_zero_is_bit_identical_to_bsp() -> None:
    workers = ["w0", "w1", "w2"]
    ssp, initial = make_state(mode="ssp", workers=workers, optimizer=OPTIMIZER, consistency={"staleness_bound": 0})
    bsp, bsp_initial = make_state(mode="sync", workers=workers, optimizer=OPTIMIZER)
    assert bits_equal(initial, bsp_initial)
    assert isinstance(ssp.policy, StaleSynchronousPolicy)
    assert ssp.policy.bound == 0
    assert _run_sync_like(ssp, workers, STEPS) == _run_sync_like(bsp, workers, STEPS)
    assert ssp.version == bsp.version == STEPS
    assert bits_equal(ssp.params.detach(), bsp.params.detach())
    # And it is the mean gradient, step by step.
    ref = Reference(bsp, initial)
    for step in range(STEPS):
        ref.step(sum(grad_like(bsp, 10 * step + i) for i in range(3)) / 3)
    torch.testing.assert_close(ssp.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)


# --- one worker is sequential SGD ------------------------------------------------------------

SINGLE_WORKER_MODES = [
    ("sync", {}),
    ("sync", {"backup_workers": 0}),
    ("ssp", {}),
    ("ssp", {"staleness_bound": 0}),
    ("ssp", {"staleness_bound": 5}),
    ("async", {}),
    ("async", {"max_staleness": 0}),
    ("async", {"staleness_lr": "inverse"}),
    ("async", {"compensation": "dc_asgd", "dc_lambda": 1.0}),
    ("async", {"compensation": "dc_asgd", "dc_lambda": 1.0, "staleness_lr": "inverse"}),
    ("auto", {}),
    ("auto", {"auto_window": 1}),
]
SINGLE_WORKER_IDS = [
    f"{mode}-{'-'.join(f'{k}={v}' for k, v in c.items()) or 'default'}" for mode, c in SINGLE_WORKER_MODES
]


@pytest.mark.parametrize(("mode", "consistency"), SINGLE_WORKER_MODES, ids=SINGLE_WORKER_IDS)
def test_one_worker_is_sequential_sgd_in_every_mode(mode: str, consistency: dict[str, Any]) -> None:
    """With one worker nothing is ever stale: aggregation is the identity, and staleness
    scaling and delay compensation must be no-ops."""
    state, initial = make_state(mode=mode, workers=["solo"], optimizer=OPTIMIZER, consistency=consistency)
    ref = Reference(state, initial)
    for step in range(STEPS):
        state.served("solo")  # the worker pulls the current version before each step
        g = grad_like(state, step)
        result = state.push("solo", f"solo:{step}", step, EPOCH, g, clock=step)
        assert result.outcome is PushOutcome.APPLIED
        assert result.version == step + 1
        assert result.staleness == 0
        assert result.folded == (0,)
        # The worker may always go on at once (at most the version just produced).
        assert result.serve_version <= state.version
        ref.step(g)
        assert bits_equal(state.params.detach(), ref.param.detach()), f"step {step} differs from torch.optim"
    assert state.counters.updates_applied == STEPS
    assert state.counters.updates_rejected == 0


def test_one_worker_dc_asgd_is_a_no_op_even_for_a_large_finite_gradient() -> None:
    optimizer = {"name": "sgd", "lr": 1e-22}
    state, initial = make_state(
        mode="async", workers=["solo"], optimizer=optimizer, consistency={"compensation": "dc_asgd"}
    )
    ref = Reference(state, initial)
    state.served("solo")
    g = torch.ones(state.numel)
    g[0] = 1e20  # finite in float32, so the shard accepts it
    assert state.push("solo", "p", 0, EPOCH, g).outcome is PushOutcome.APPLIED
    ref.step(g)
    assert bool(torch.isfinite(state.params).all())
    assert bits_equal(state.params.detach(), ref.param.detach())


@pytest.mark.parametrize("sync_every", [1, 3])
def test_one_worker_local_sgd_outer_step_reproduces_the_pushed_delta(sync_every: int) -> None:
    """outer_lr 1 without momentum: the shard lands exactly where the worker's local steps
    went, so one worker in local_sgd mode is sequential SGD with the inner optimizer."""
    consistency = {"sync_every": sync_every, "outer_lr": 1.0, "outer_momentum": 0.0}
    state, initial = make_state(mode="local_sgd", workers=["solo"], optimizer=OPTIMIZER, consistency=consistency)
    # The worker: the job's (inner) optimizer on its own copy, carried across rounds.
    local = initial.clone().requires_grad_(True)
    inner = build_optimizer(state.spec.optimizer, [local])
    # Sequential SGD over all the steps, for comparison.
    sequential = initial.clone().requires_grad_(True)
    seq_opt = build_optimizer(state.spec.optimizer, [sequential])
    step = 0
    for round_ in range(3):
        start = snapshot(state)
        with torch.no_grad():
            local.copy_(start)
        for _ in range(sync_every):
            g = grad_like(state, step)
            for p, opt in ((local, inner), (sequential, seq_opt)):
                p.grad = g.clone()
                opt.step()
                p.grad = None
            step += 1
        delta = start - local.detach()  # DiLoCo's pseudo-gradient
        result = state.push("solo", f"solo:{round_}", round_, EPOCH, delta, clock=round_)
        assert result.outcome is PushOutcome.APPLIED
        assert result.version == round_ + 1
        assert bits_equal(state.params.detach(), start - delta), "outer SGD with lr 1 must subtract the delta"
        torch.testing.assert_close(state.params.detach(), local.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(state.params.detach(), sequential.detach(), rtol=0, atol=1e-5)


# --- a worker leaving mid-step -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "consistency"),
    [("sync", {}), ("sync", {"backup_workers": 1}), ("ssp", {}), ("ssp", {"staleness_bound": 0}), ("auto", {})],
)
def test_worker_leaving_mid_step_completes_the_buffer_with_the_gradients_received(
    mode: str, consistency: dict[str, Any]
) -> None:
    workers = ["w0", "w1", "w2", "w3"]
    state, initial = make_state(mode=mode, workers=workers, optimizer=OPTIMIZER, consistency=consistency)
    ref = Reference(state, initial)
    g0, g1 = grad_like(state, 0), grad_like(state, 1)
    assert state.push("w0", "a", 0, EPOCH, g0).outcome is PushOutcome.BUFFERED
    assert state.push("w1", "b", 0, EPOCH, g1).outcome is PushOutcome.BUFFERED
    # Two of the four leave (with one backup, the remaining quorum is 2 - 1 = 1: met already).
    assert state.set_membership(EPOCH + 1, ["w0", "w1"]) == (0, 0)
    ref.step((g0 + g1) / 2)
    torch.testing.assert_close(state.params.detach(), ref.param.detach(), rtol=0, atol=1e-6)
    assert state.version == 1
    assert state.view().buffered == {}


# --- the shard runtime's wait, per mode ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "ssp", "auto"])
def test_runtime_wait_timeout_names_the_workers_whose_gradient_is_missing(mode: str) -> None:
    state, _ = make_state(mode=mode, workers=["w0", "w1", "w2"])
    state.push("w0", "a", 0, EPOCH, grad_like(state, 0))
    runtime = ShardRuntime("job", state, ShardMetrics(CollectorRegistry()).for_job("job", mode, 0))

    async def wait() -> None:
        await runtime.wait_for_version(1, 0.01)

    with pytest.raises(DeadlineExceededError, match=r"clock 0 has gradients from w0 and waits for w1, w2\)"):
        asyncio.run(wait())
