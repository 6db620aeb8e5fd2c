"""Unit tests for `mode: auto`: the tuner's decisions from timings, and the policy it drives."""

from __future__ import annotations

import random

import pytest

# isort: split
from tidal.core.auto import AutoSettings, AutoTuner
from tidal.core.errors import InvalidArgumentError
from tidal.core.policy import AutoPolicy, PushDecision, ShardView, StaleSynchronousPolicy, policy_for
from tidal.core.spec import parse_job_spec

WORKERS = ("w0", "w1", "w2")


def feed(tuner: AutoTuner, busy_s: dict[str, list[float]], clocks: int) -> list[AutoSettings]:
    """Simulates `clocks` steps: each worker is served at t and its gradient arrives after its
    busy time; returns the settings after each decision."""
    now = 0.0
    decided = []
    for step in range(clocks):
        for worker, times in busy_s.items():
            tuner.served(worker, now)
            tuner.arrived(worker, now + times[step % len(times)])
        now += 10.0
        if decision := tuner.clock_applied(frozenset(busy_s)):
            decided.append(decision.settings)
    return decided


def tuner(window: int = 4, max_backups: int = 1, max_bound: int = 4) -> AutoTuner:
    return AutoTuner(num_workers=3, max_backup_workers=max_backups, max_staleness_bound=max_bound, window=window)


def test_uniform_workers_keep_bsp() -> None:
    t = tuner()
    assert feed(t, {w: [0.1] for w in WORKERS}, 40) == []
    assert t.settings == AutoSettings(0, 0)


def test_a_persistent_straggler_becomes_a_backup() -> None:
    t = tuner()
    decided = feed(t, {"w0": [0.1], "w1": [0.1], "w2": [0.4]}, 8)
    assert decided == [AutoSettings(backup_workers=1, staleness_bound=0)]


def test_the_reason_names_the_straggler_and_its_factor() -> None:
    t = tuner(window=2)
    for w, busy in (("w0", 0.1), ("w1", 0.1), ("w2", 0.4)):
        t.served(w, 0.0)
        t.arrived(w, busy)
    t.clock_applied(frozenset(WORKERS))
    decision = t.clock_applied(frozenset(WORKERS))
    assert decision is not None
    assert "w2 4.0x slower" in decision.reason
    assert decision.slowness["w2"] == pytest.approx(4.0)
    assert decision.step_s == pytest.approx(0.1)


def test_a_straggler_back_to_speed_stops_being_a_backup_with_hysteresis() -> None:
    t = tuner()
    feed(t, {"w0": [0.1], "w1": [0.1], "w2": [0.4]}, 8)
    assert t.settings.backup_workers == 1
    # 1.7x: below the 2x that makes a straggler, above the 1.5x that releases one.
    feed(t, {"w0": [0.1], "w1": [0.1], "w2": [0.17]}, 64)
    assert t.settings.backup_workers == 1
    feed(t, {"w0": [0.1], "w1": [0.1], "w2": [0.1]}, 64)
    assert t.settings.backup_workers == 0


def test_transient_jitter_raises_the_staleness_bound_not_the_backups() -> None:
    rng = random.Random(0)
    # Every worker is sometimes 2.5 steps late, never persistently.
    busy = {w: [0.1 + (0.25 if rng.random() < 0.3 else 0.0) for _ in range(32)] for w in WORKERS}
    t = tuner()
    feed(t, busy, 32)
    assert t.settings.backup_workers == 0
    assert t.settings.staleness_bound == 3


def test_the_bound_and_backups_never_pass_their_caps() -> None:
    busy = {"w0": [0.1], "w1": [0.5, 0.1, 0.1, 0.1], "w2": [5.0], "w3": [4.0]}
    t = AutoTuner(num_workers=4, max_backup_workers=1, max_staleness_bound=2, window=4)
    feed(t, busy, 32)
    assert t.settings == AutoSettings(backup_workers=1, staleness_bound=2)


def test_backups_never_reach_the_number_of_workers() -> None:
    assert AutoTuner(num_workers=2, max_backup_workers=5, max_staleness_bound=1, window=1).max_backup_workers == 1


def test_no_decision_before_every_worker_was_measured() -> None:
    t = tuner(window=1)
    t.served("w0", 0.0)
    t.arrived("w0", 0.1)
    assert t.clock_applied(frozenset(WORKERS)) is None


def test_an_arrival_without_a_serve_is_not_timed() -> None:
    t = tuner(window=1)
    t.arrived("w0", 5.0)
    assert t.known_workers() == set()


def test_a_worker_that_left_is_forgotten() -> None:
    t = tuner()
    feed(t, {"w0": [0.1], "w1": [0.1], "w2": [0.4]}, 8)
    t.forget("w2")
    assert t.known_workers() == {"w0", "w1"}


def auto(backups: int, bound: int, cap: int = 4) -> AutoPolicy:
    t = AutoTuner(num_workers=3, max_backup_workers=2, max_staleness_bound=cap, window=4)
    t.settings = AutoSettings(backups, bound)
    return AutoPolicy(t)


def view(version: int, arrived: tuple[str, ...] = (), clock: int | None = None) -> ShardView:
    buffered = {version if clock is None else clock: frozenset(arrived)} if arrived else {}
    return ShardView(version, frozenset(WORKERS), buffered)


def test_auto_with_bound_and_no_backups_decides_like_ssp() -> None:
    ssp = StaleSynchronousPolicy(2)
    for base, clock, version in [(3, 3, 3), (3, 5, 4), (2, 3, 4), (4, 4, 4)]:
        v = view(version)
        assert auto(0, 2).on_push("w0", base, clock, v) is ssp.on_push("w0", base, clock, v)
        assert auto(0, 2).serve_after_push(base, clock, v) == ssp.serve_after_push(base, clock, v)
        assert auto(0, 2).complete(version, view(version, ("w0", "w1"))) is False


def test_auto_with_backups_completes_with_the_first_members_minus_backups() -> None:
    assert auto(1, 0).complete(5, view(5, ("w0", "w2"))) is True
    assert auto(1, 0).complete(5, view(5, ("w0",))) is False
    assert auto(2, 0).complete(5, view(5, ("w1",))) is True


def test_auto_drops_a_gradient_whose_clock_was_applied_without_it() -> None:
    assert auto(1, 0).on_push("w2", 4, 4, view(6)) is PushDecision.DROP_LATE


def test_auto_keeps_a_gradient_served_under_a_bound_since_lowered_and_slows_its_worker() -> None:
    p = auto(0, 0)
    assert p.on_push("w0", 3, 5, view(4)) is PushDecision.BUFFER
    # Bound 0 would ask for version 6; one version per step lets it come back within the bound.
    assert p.serve_after_push(3, 5, view(4)) == 5


@pytest.mark.parametrize(("base", "clock"), [(5, 4), (1, 6)])
def test_auto_refuses_a_clock_behind_its_base_or_past_the_highest_bound(base: int, clock: int) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^push\.clock: "):
        auto(0, 2, cap=4).on_push("w0", base, clock, view(5))


def test_policy_for_builds_the_tuner_from_the_spec() -> None:
    spec = parse_job_spec(
        {"mode": "auto", "num_workers": 5, "consistency": {"auto_max_staleness_bound": 6, "auto_window": 3}}
    )
    policy = policy_for(spec)
    assert isinstance(policy, AutoPolicy)
    assert policy.name == "auto"
    assert (policy.tuner.max_backup_workers, policy.tuner.max_staleness_bound, policy.tuner.window) == (2, 6, 3)
    assert (policy.backup_workers, policy.bound) == (0, 0)


def test_a_shard_in_auto_mode_learns_the_straggler_from_serve_and_arrival_times() -> None:
    """ShardState feeds the tuner: after a window with w2 four times slower, the next clocks
    complete without it and its late gradients are dropped."""
    from tests.unit.test_shard_state import EPOCH, grad_like, make_state

    state, _ = make_state(mode="auto", workers=WORKERS, consistency={"auto_window": 4})
    now = 0.0
    for clock in range(4):  # BSP while it measures: every clock waits for w2
        for w in WORKERS:
            state.served(w, now=now)
        for w, busy in (("w0", 0.1), ("w1", 0.1), ("w2", 0.4)):
            state.push(w, f"{w}:{clock}", clock, EPOCH, grad_like(state, clock), clock=clock, now=now + busy)
        now += 1.0
    assert state.version == 4
    assert [d.settings for d in state.auto_decisions] == [AutoSettings(backup_workers=1, staleness_bound=0)]
    for w in ("w0", "w1"):
        state.push(w, f"{w}:4", 4, EPOCH, grad_like(state, 4), clock=4, now=now)
    assert state.version == 5  # clock 4 completed with two of three
    late = state.push("w2", "w2:4", 4, EPOCH, grad_like(state, 4), clock=4, now=now + 0.4)
    assert late.outcome.name == "DROPPED_LATE"
    assert late.serve_version <= state.version  # the straggler goes on from the newest version
