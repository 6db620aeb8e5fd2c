"""Unit tests for tidal.core.advice: which mode the probe's timings lead to, and why."""

from __future__ import annotations

import pytest

# isort: split
from tidal.advise import PROBE_ATTEMPTS, timings_of
from tidal.compare.results import WorkerResult
from tidal.core.advice import PREFER_FRESHER, STALE_LOSS_RATIO, ConvergenceProbe, WorkerTiming, advise
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError
from tidal.core.spec import Mode, parse_job_spec


def timings(busy: list[float], comm: float = 0.002, tail: float = 1.1) -> list[WorkerTiming]:
    return [WorkerTiming(f"rank {i}", b, comm, b + comm, (b + comm) * tail) for i, b in enumerate(busy)]


def test_uniform_workers_get_plain_sync() -> None:
    advice = advise(timings([0.02, 0.02, 0.021]), batch_size=32)
    assert advice.mode is Mode.SYNC
    assert advice.consistency == {}
    assert "hard to beat" in advice.reason


def test_one_slow_worker_of_three_gets_one_backup_worker() -> None:
    advice = advise(timings([0.02, 0.02, 0.08]), batch_size=32)
    assert (advice.mode, advice.consistency) == (Mode.SYNC, {"backup_workers": 1})
    assert "rank 2 4.0x slower" in advice.reason
    assert advice.estimates["sync (backup_workers 1)"] > advice.estimates["sync"]


def test_a_slow_majority_gets_async_with_the_inverse_staleness_learning_rate() -> None:
    advice = advise(timings([0.01, 0.05, 0.09]), batch_size=32)
    assert (advice.mode, advice.consistency) == (Mode.ASYNC, {"staleness_lr": "inverse"})


def test_jittery_but_equal_workers_get_a_staleness_bound_covering_the_jitter() -> None:
    advice = advise(timings([0.02, 0.02, 0.02, 0.02], tail=3.4), batch_size=32)
    assert advice.mode is Mode.SSP
    assert advice.consistency == {"staleness_bound": 3}


def test_when_stale_gradients_hurt_the_stale_modes_are_left_out() -> None:
    """docs/evidence.md: at the lr tuned for sync, async and every SSP bound failed to train
    while the timings favoured them. The probe's sync run at equal samples tells."""
    jittery = timings([0.02, 0.02, 0.02, 0.02], tail=3.4)
    hurt = ConvergenceProbe(samples=960, sync_val_loss=4.4e-4, async_val_loss=5.9e-4)
    advice = advise(jittery, batch_size=8, convergence=hurt)
    assert (advice.mode, advice.consistency) == (Mode.SYNC, {})
    assert "ssp (staleness_bound 3), async (staleness_lr inverse) were left out" in advice.reason
    assert "After the same 960 samples" in advice.reason and "1.34x" in advice.reason
    assert advice.figures["probe_async_val_loss"] == 5.9e-4
    # Estimates are still reported for every candidate, the left-out ones too.
    assert set(advice.estimates) == {"sync", "ssp (staleness_bound 3)", "async (staleness_lr inverse)"}
    # Backup workers train on fresh gradients: still chosen for a straggler.
    straggler = advise(timings([0.02, 0.02, 0.08]), batch_size=8, convergence=hurt)
    assert (straggler.mode, straggler.consistency) == (Mode.SYNC, {"backup_workers": 1})
    # A slow majority, where async wins on throughput: sync then.
    majority = advise(timings([0.01, 0.05, 0.09]), batch_size=8, convergence=hurt)
    assert majority.mode is Mode.SYNC


def test_when_stale_gradients_cost_little_the_timings_decide() -> None:
    close = ConvergenceProbe(samples=960, sync_val_loss=4.4e-4, async_val_loss=4.4e-4 * STALE_LOSS_RATIO)
    advice = advise(timings([0.02, 0.02, 0.02, 0.02], tail=3.4), batch_size=8, convergence=close)
    assert (advice.mode, advice.consistency) == (Mode.SSP, {"staleness_bound": 3})
    assert "stale gradients cost this job little" in advice.reason


def test_communication_heavy_jobs_get_local_sgd() -> None:
    advice = advise(timings([0.002, 0.002], comm=0.02), batch_size=32)
    assert advice.mode is Mode.LOCAL_SGD
    assert advice.consistency == {"sync_every": 40}
    assert "Communication dominates" in advice.reason


def test_a_fresher_mode_wins_unless_a_staler_one_is_clearly_faster() -> None:
    advice = advise(timings([0.02, 0.02, 0.08]), batch_size=32)
    chosen = advice.estimates["sync (backup_workers 1)"]
    assert chosen * PREFER_FRESHER >= max(advice.estimates.values())
    assert "others:" in advice.reason


def test_every_recommendation_is_a_valid_job_spec() -> None:
    cases = [([0.02] * 3, 0.002, 1.1), ([0.02, 0.02, 0.08], 0.002, 1.1), ([0.01, 0.05, 0.09], 0.002, 1.1),
             ([0.02] * 4, 0.002, 3.4), ([0.002] * 2, 0.02, 1.1)]  # fmt: skip
    for busy, comm, tail in cases:
        advice = advise(timings(busy, comm, tail), batch_size=32)
        parse_job_spec({"num_workers": len(busy), **advice.spec_fields()})


@pytest.mark.parametrize("bad", [[], [WorkerTiming("rank 0", 0.0, 0.01)]])
def test_a_probe_without_timings_is_refused(bad: list[WorkerTiming]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^probe: "):
        advise(bad, batch_size=32)


def test_a_worker_that_made_no_probe_step_is_named() -> None:
    """An async probe ends after steps x workers updates, whoever made them; a worker that made
    none has no timings, and the probe's answer names it rather than advising without it."""
    made = WorkerResult(0, "w0", "worker-0", 1.0, 10, phase_means={"compute": 0.01, "push": 0.002})
    idle = WorkerResult(1, "w1", "worker-1", 1.0, 0)
    with pytest.raises(FailedPreconditionError, match=f"worker-1 .* after {PROBE_ATTEMPTS} probes"):
        timings_of([made, idle])
    assert [t.worker for t in timings_of([made])] == ["rank 0"]
