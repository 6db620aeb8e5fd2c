"""Unit tests for tidal.core.policy: a contract every consistency policy must honour,
then table-driven cases for each policy's own decisions.

To cover a new policy (or a new configuration of one), add its factory to `POLICY_CASES`;
the contract suite runs on it unchanged. Its own decisions go into a table next to the
sync, ssp and async ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from functools import partial

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

# isort: split
from tidal.core.auto import AutoSettings, AutoTuner
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError
from tidal.core.policy import (
    AsyncPolicy,
    AutoPolicy,
    ConsistencyPolicy,
    PushDecision,
    ShardView,
    StaleSynchronousPolicy,
    SyncPolicy,
    policy_for,
)
from tidal.core.spec import parse_job_spec


def auto(backups: int, bound: int) -> AutoPolicy:
    """An auto policy whose tuner currently holds these settings."""
    tuner = AutoTuner(num_workers=4, max_backup_workers=3, max_staleness_bound=8, window=4)
    tuner.settings = AutoSettings(backups, bound)
    return AutoPolicy(tuner)


# Every policy, by factory, in every configuration the contract must hold for.
POLICY_CASES: list[tuple[str, Callable[[], ConsistencyPolicy]]] = [
    ("SyncPolicy(0)", partial(SyncPolicy, 0)),
    ("SyncPolicy(1)", partial(SyncPolicy, 1)),
    ("StaleSynchronousPolicy(0)", partial(StaleSynchronousPolicy, 0)),
    ("StaleSynchronousPolicy(3)", partial(StaleSynchronousPolicy, 3)),
    ("AsyncPolicy(None)", partial(AsyncPolicy, None)),
    ("AsyncPolicy(2)", partial(AsyncPolicy, 2)),
    ("AutoPolicy(0, 0)", partial(auto, 0, 0)),
    ("AutoPolicy(1, 2)", partial(auto, 1, 2)),
]
POLICIES = [factory for _, factory in POLICY_CASES]
POLICY_IDS = [name for name, _ in POLICY_CASES]

WORKERS = ("w0", "w1", "w2", "w3")
DROPS = (PushDecision.DROP_LATE, PushDecision.REJECT_STALE)


def view(
    version: int,
    members: tuple[str, ...] = ("w0", "w1"),
    arrived: tuple[str, ...] = (),
    clock: int | None = None,
    buffered: Mapping[int, tuple[str, ...]] | None = None,
) -> ShardView:
    """A view whose buffer of `clock` (default: the shard's version) holds `arrived`, plus
    any other buffers in `buffered`."""
    buffers = {c: frozenset(ws) for c, ws in (buffered or {}).items()}
    if arrived:
        buffers[version if clock is None else clock] = frozenset(arrived)
    return ShardView(version, frozenset(members), buffers)


@st.composite
def views(draw: st.DrawFn) -> ShardView:
    version = draw(st.integers(0, 1000))
    members = draw(st.frozensets(st.sampled_from(WORKERS)))
    # Buffers sit at the shard's version and a few clocks ahead of it (SSP), rarely behind.
    clocks = st.integers(max(0, version - 2), version + 6)
    buffered = draw(st.dictionaries(clocks, st.frozensets(st.sampled_from(WORKERS), min_size=1), max_size=4))
    return ShardView(version, members, buffered)


def bases(v: ShardView) -> st.SearchStrategy[int]:
    """Base versions a worker may push from, weighted towards the shard's version (where
    gradients are buffered or applied fresh) and just behind it (where they are late)."""
    return st.one_of(st.just(v.version), st.integers(max(0, v.version - 3), v.version), st.integers(0, v.version))


@pytest.fixture(params=POLICIES, ids=POLICY_IDS)
def policy(request: pytest.FixtureRequest) -> ConsistencyPolicy:
    return request.param()


# --- the view --------------------------------------------------------------------------


def test_view_arrived_is_empty_for_a_clock_without_a_buffer() -> None:
    v = view(3, arrived=("w0",), buffered={5: ("w1",)})
    assert v.arrived(3) == frozenset({"w0"})
    assert v.arrived(5) == frozenset({"w1"})
    assert v.arrived(4) == frozenset()
    assert ShardView(0, frozenset()).arrived(0) == frozenset()


# --- contract: every policy ----------------------------------------------------------


def test_policy_names_are_non_empty_strings_unique_per_policy_class() -> None:
    names_by_class: dict[type, set[str]] = {}
    for factory in POLICIES:
        p = factory()
        assert isinstance(p.name, str)
        assert p.name
        names_by_class.setdefault(type(p), set()).add(p.name)
    # One name per class (its configuration does not rename it), and no two classes share one.
    assert all(len(names) == 1 for names in names_by_class.values())
    names = [next(iter(n)) for n in names_by_class.values()]
    assert len(set(names)) == len(names)
    assert len(names_by_class) == 4


@pytest.mark.parametrize("clock_ahead", [0, 1])
@pytest.mark.parametrize(("version", "base"), [(0, 1), (5, 6), (5, 100), (0, 2**40)])
def test_contract_base_version_ahead_of_shard_is_invalid(
    policy: ConsistencyPolicy, version: int, base: int, clock_ahead: int
) -> None:
    with pytest.raises(InvalidArgumentError, match=r"push\.base_version"):
        policy.on_push("w0", base, base + clock_ahead, view(version))


@settings(deadline=None)
@given(v=views(), data=st.data())
def test_contract_base_version_ahead_is_invalid_for_any_view(v: ShardView, data: st.DataObject) -> None:
    base = data.draw(st.integers(v.version + 1, v.version + 1000))
    clock = data.draw(st.integers(0, base + 1000))
    worker = data.draw(st.sampled_from(WORKERS))
    for factory in POLICIES:
        # Checked first: whatever the clock and the buffers, a base from the future is invalid.
        with pytest.raises(InvalidArgumentError, match=r"push\.base_version"):
            factory().on_push(worker, base, clock, v)


def _decide(p: ConsistencyPolicy, worker: str, base: int, clock: int, v: ShardView) -> PushDecision | None:
    """The decision, or None where the push is refused for a reason the contract allows:
    a clock the policy's staleness rules forbid, or a second gradient for the same buffer."""
    try:
        return p.on_push(worker, base, clock, v)
    except InvalidArgumentError as exc:
        assert "push.clock" in str(exc)
        # Only a clock ahead of the base can be out of bounds (the caller never passes one behind).
        assert clock > base
        return None
    except FailedPreconditionError as exc:
        assert worker in str(exc)
        assert worker in v.arrived(p.buffer_clock(base, clock))
        return None


@settings(deadline=None, max_examples=200)
@given(v=views(), data=st.data())
def test_contract_serve_after_push_never_deadlocks(v: ShardView, data: st.DataObject) -> None:
    """The version a worker is told to wait for is >= 0, at most the shard's next version,
    and reachable without the worker's own next gradient: a dropped or refused worker never
    waits at all; a buffered one waits at most for the version its buffer produces."""
    base = data.draw(bases(v))
    clock = data.draw(st.integers(base, base + 4))
    worker = data.draw(st.sampled_from(WORKERS))
    for factory in POLICIES:
        p = factory()
        decision = _decide(p, worker, base, clock, v)
        event(f"{p.name}: {decision}")
        if decision is None:
            continue
        served = p.serve_after_push(base, clock, v)
        assert served >= 0
        assert served <= v.version + 1
        if decision in DROPS:
            assert served <= v.version, f"{p.name}: a dropped worker must not wait"
        elif decision is PushDecision.BUFFER:
            assert served <= p.buffer_clock(base, clock) + 1
            assert p.buffer_clock(base, clock) >= v.version, "a gradient is never buffered behind the shard"
        # The served version is a legal base for the worker's next clock.
        next_decision = p.on_push(worker, served, clock + 1, ShardView(served, v.members))
        assert isinstance(next_decision, PushDecision)


@settings(deadline=None)
@given(v=views(), data=st.data())
def test_contract_sync_and_async_never_serve_a_version_the_worker_already_passed(
    v: ShardView, data: st.DataObject
) -> None:
    base = data.draw(bases(v))
    for factory in POLICIES:
        p = factory()
        if not isinstance(p, (SyncPolicy, AsyncPolicy)):
            continue
        served = p.serve_after_push(base, base, v)
        assert served >= base + 1
        # A worker is never told to wait for more than the shard's next version.
        assert served <= v.version + 1


@settings(deadline=None)
@given(v=views(), data=st.data())
def test_contract_on_push_returns_a_decision_for_a_first_push(v: ShardView, data: st.DataObject) -> None:
    base = data.draw(bases(v))
    for factory in POLICIES:
        p = factory()
        # A worker that has not pushed for this clock yet always gets a decision (clock ==
        # base is within every staleness bound).
        worker = next((w for w in WORKERS if w not in v.arrived(p.buffer_clock(base, base))), None)
        if worker is None:
            continue
        assert isinstance(p.on_push(worker, base, base, v), PushDecision)


@pytest.mark.parametrize("arrived", [(), ("w0",), ("w0", "w1")])
@pytest.mark.parametrize("clock", [3, 4])
def test_contract_empty_membership_never_completes_a_buffer(
    policy: ConsistencyPolicy, arrived: tuple[str, ...], clock: int
) -> None:
    assert policy.complete(clock, view(3, members=(), arrived=arrived, clock=clock)) is False


@settings(deadline=None)
@given(v=views(), clock=st.integers(0, 1010))
def test_contract_empty_membership_never_completes_for_any_view(v: ShardView, clock: int) -> None:
    empty = ShardView(v.version, frozenset(), v.buffered)
    for factory in POLICIES:
        assert factory().complete(clock, empty) is False


def test_contract_decisions_do_not_depend_on_call_history(policy: ConsistencyPolicy) -> None:
    """Policies are pure: asking twice (with other questions in between, and with an equal
    but distinct view) gives the same answer, and the view is not modified."""
    v = view(4, members=("w0", "w1", "w2"), arrived=("w1",), buffered={5: ("w1", "w2")})
    kept = copy.deepcopy(v)
    other = view(9, members=("w3",), arrived=("w3",))

    def ask(x: ShardView) -> tuple[object, ...]:
        return (
            policy.on_push("w0", 4, 4, x),
            policy.on_push("w0", 3, 3, x),
            policy.buffer_clock(4, 4),
            policy.complete(4, x),
            policy.complete(5, x),
            policy.serve_after_push(2, 2, x),
            policy.serve_after_push(4, 4, x),
        )

    first = ask(v)
    ask(other)
    policy.complete(9, other)
    assert ask(v) == first
    assert ask(copy.deepcopy(v)) == first
    assert v == kept


@settings(deadline=None)
@given(v=views(), data=st.data())
def test_contract_two_instances_of_a_policy_decide_alike(v: ShardView, data: st.DataObject) -> None:
    base = data.draw(bases(v))
    clock = data.draw(st.integers(base, base + 4))
    worker = data.draw(st.sampled_from(WORKERS))
    for factory in POLICIES:
        a, b = factory(), factory()
        assert _outcome(a, worker, base, clock, v) == _outcome(b, worker, base, clock, v)
        assert _outcome(a, worker, base, clock, v) == _outcome(a, worker, base, clock, v)


def _outcome(p: ConsistencyPolicy, worker: str, base: int, clock: int, v: ShardView) -> tuple[object, ...]:
    try:
        decision: object = p.on_push(worker, base, clock, v)
    except (InvalidArgumentError, FailedPreconditionError) as exc:
        decision = (type(exc), str(exc))
    return (
        decision,
        p.buffer_clock(base, clock),
        p.complete(v.version, v),
        p.complete(clock, v),
        p.serve_after_push(base, clock, v),
    )


# --- sync ----------------------------------------------------------------------------

SYNC_PUSH_CASES = [
    # (worker, base, version, members, arrived at the shard's version, expected)
    ("w0", 0, 0, ("w0", "w1"), (), PushDecision.BUFFER),
    ("w1", 0, 0, ("w0", "w1"), ("w0",), PushDecision.BUFFER),
    ("w0", 7, 7, ("w0",), (), PushDecision.BUFFER),
    ("w0", 6, 7, ("w0", "w1"), (), PushDecision.DROP_LATE),
    ("w0", 0, 7, ("w0", "w1"), (), PushDecision.DROP_LATE),
    # Late is decided before "already arrived": a stale retry is dropped, not an error.
    ("w0", 6, 7, ("w0", "w1"), ("w0",), PushDecision.DROP_LATE),
]


@pytest.mark.parametrize("backups", [0, 1])
@pytest.mark.parametrize(("worker", "base", "version", "members", "arrived", "expected"), SYNC_PUSH_CASES)
def test_sync_on_push(
    worker: str,
    base: int,
    version: int,
    members: tuple[str, ...],
    arrived: tuple[str, ...],
    expected: PushDecision,
    backups: int,
) -> None:
    p = SyncPolicy(backups)
    assert p.on_push(worker, base, base, view(version, members, arrived)) is expected
    # Sync ignores the worker's clock (its step count): only the base version matters.
    assert p.on_push(worker, base, base + 5, view(version, members, arrived)) is expected


def test_sync_late_retry_is_dropped_even_when_its_own_clock_buffer_lists_it() -> None:
    v = view(7, ("w0", "w1"), arrived=("w0",), clock=6)
    assert SyncPolicy().on_push("w0", 6, 6, v) is PushDecision.DROP_LATE


def test_sync_second_push_from_same_worker_in_one_version_is_refused() -> None:
    with pytest.raises(FailedPreconditionError, match=r"w0.*clock 3"):
        SyncPolicy().on_push("w0", 3, 3, view(3, ("w0", "w1"), ("w0",)))
    # With backup workers too.
    with pytest.raises(FailedPreconditionError, match=r"w0.*clock 3"):
        SyncPolicy(1).on_push("w0", 3, 3, view(3, ("w0", "w1", "w2"), ("w0",)))


@pytest.mark.parametrize(("base", "clock"), [(0, 0), (4, 4), (4, 9)])
def test_sync_buffers_by_base_version(base: int, clock: int) -> None:
    assert SyncPolicy().buffer_clock(base, clock) == base
    assert SyncPolicy(2).buffer_clock(base, clock) == base


SYNC_BARRIER_CASES = [
    # (members, arrived, complete)
    (("w0", "w1"), (), False),
    (("w0", "w1"), ("w0",), False),
    (("w0", "w1"), ("w0", "w1"), True),
    (("w0",), ("w0",), True),
    # A member left mid-step: the smaller membership is already covered.
    (("w0",), ("w0", "w1"), True),
    (("w1",), ("w0",), False),
    (("w0", "w1", "w2"), ("w0", "w2"), False),
    (("w0", "w2"), ("w0", "w2"), True),
    # Nobody to wait for is not a completed barrier.
    ((), (), False),
    ((), ("w0",), False),
]


@pytest.mark.parametrize(("members", "arrived", "complete"), SYNC_BARRIER_CASES)
def test_sync_barrier_completes_exactly_when_members_have_arrived(
    members: tuple[str, ...], arrived: tuple[str, ...], complete: bool
) -> None:
    assert SyncPolicy().complete(2, view(2, members, arrived)) is complete
    assert SyncPolicy(0).complete(2, view(2, members, arrived)) is complete


def test_sync_barrier_looks_at_the_buffer_of_the_clock_asked_about() -> None:
    v = view(2, ("w0", "w1"), arrived=("w0", "w1"), clock=3)
    assert SyncPolicy().complete(2, v) is False
    assert SyncPolicy().complete(3, v) is True


@settings(deadline=None)
@given(v=views(), clock=st.integers(0, 1010))
def test_sync_barrier_property(v: ShardView, clock: int) -> None:
    expected = bool(v.members) and v.members.issubset(v.arrived(clock))
    assert SyncPolicy().complete(clock, v) is expected


def test_sync_member_leaving_mid_step_completes_the_barrier() -> None:
    policy = SyncPolicy()
    before = view(5, ("w0", "w1", "w2"), ("w0", "w1"))
    assert not policy.complete(5, before)
    after = ShardView(before.version, before.members - {"w2"}, before.buffered)
    assert policy.complete(5, after)


@pytest.mark.parametrize(("base", "version", "expected"), [(0, 0, 1), (3, 3, 4), (2, 5, 3)])
def test_sync_serves_the_version_after_the_base(base: int, version: int, expected: int) -> None:
    assert SyncPolicy().serve_after_push(base, base, view(version)) == expected
    assert SyncPolicy(1).serve_after_push(base, base + 3, view(version)) == expected


# --- sync with backup workers --------------------------------------------------------

BACKUP_BARRIER_CASES = [
    # (backups, members, arrived, complete)
    (1, ("w0", "w1", "w2"), ("w0",), False),
    (1, ("w0", "w1", "w2"), ("w0", "w2"), True),
    (1, ("w0", "w1", "w2"), ("w0", "w1", "w2"), True),
    (2, ("w0", "w1", "w2"), ("w1",), True),
    # Gradients from workers that have left do not count towards the quorum.
    (1, ("w0", "w1", "w2"), ("w0", "w3"), False),
    # More backups than members still needs one gradient.
    (1, ("w0",), (), False),
    (1, ("w0",), ("w0",), True),
    (3, ("w0", "w1"), ("w1",), True),
    (3, ("w0", "w1"), (), False),
    (1, (), ("w0",), False),
]


@pytest.mark.parametrize(("backups", "members", "arrived", "complete"), BACKUP_BARRIER_CASES)
def test_sync_backup_workers_complete_after_members_minus_backups(
    backups: int, members: tuple[str, ...], arrived: tuple[str, ...], complete: bool
) -> None:
    assert SyncPolicy(backups).complete(4, view(4, members, arrived)) is complete


@settings(deadline=None)
@given(v=views(), clock=st.integers(0, 1010), backups=st.integers(0, 5))
def test_sync_backup_barrier_property(v: ShardView, clock: int, backups: int) -> None:
    needed = max(1, len(v.members) - backups)
    expected = bool(v.members) and len(v.arrived(clock) & v.members) >= needed
    assert SyncPolicy(backups).complete(clock, v) is expected


def test_sync_backup_worker_straggling_past_the_step_is_dropped_late() -> None:
    p = SyncPolicy(1)
    members = ("w0", "w1", "w2")
    assert p.on_push("w0", 0, 0, view(0, members)) is PushDecision.BUFFER
    assert p.on_push("w1", 0, 0, view(0, members, ("w0",))) is PushDecision.BUFFER
    assert p.complete(0, view(0, members, ("w0", "w1")))
    # The shard moved on; the third gradient for version 0 arrives.
    after = view(1, members)
    assert p.on_push("w2", 0, 0, after) is PushDecision.DROP_LATE
    assert p.serve_after_push(0, 0, after) == 1  # the current version: no wait


@settings(deadline=None)
@given(v=views(), data=st.data())
def test_sync_zero_backups_decides_exactly_like_plain_sync(v: ShardView, data: st.DataObject) -> None:
    base = data.draw(bases(v))
    clock = data.draw(st.integers(0, v.version + 8))
    worker = data.draw(st.sampled_from(WORKERS))
    assert _outcome(SyncPolicy(0), worker, base, clock, v) == _outcome(SyncPolicy(), worker, base, clock, v)


# --- ssp -----------------------------------------------------------------------------

SSP_PUSH_CASES = [
    # (bound, worker, base, clock, version, buffered, expected)
    (2, "w0", 0, 0, 0, {}, PushDecision.BUFFER),
    (2, "w0", 0, 1, 0, {0: ("w0",)}, PushDecision.BUFFER),
    (2, "w0", 0, 2, 0, {0: ("w0",), 1: ("w0",)}, PushDecision.BUFFER),
    (2, "w1", 3, 4, 3, {3: ("w0",), 4: ("w0",)}, PushDecision.BUFFER),
    # A clock the shard has applied without this worker (it left and came back).
    (2, "w0", 1, 2, 3, {}, PushDecision.DROP_LATE),
    (0, "w0", 2, 2, 3, {}, PushDecision.DROP_LATE),
    # Late is decided before "already arrived".
    (2, "w0", 1, 2, 3, {2: ("w0",)}, PushDecision.DROP_LATE),
    (0, "w0", 5, 5, 5, {5: ("w1",)}, PushDecision.BUFFER),
]


@pytest.mark.parametrize(("bound", "worker", "base", "clock", "version", "buffered", "expected"), SSP_PUSH_CASES)
def test_ssp_on_push(
    bound: int,
    worker: str,
    base: int,
    clock: int,
    version: int,
    buffered: dict[int, tuple[str, ...]],
    expected: PushDecision,
) -> None:
    v = view(version, buffered=buffered)
    assert StaleSynchronousPolicy(bound).on_push(worker, base, clock, v) is expected


@pytest.mark.parametrize(
    ("bound", "base", "clock"),
    [(2, 0, 3), (0, 0, 1), (3, 1, 5), (2, 2, 1), (0, 3, 2), (2, 0, -1)],
    ids=["past-bound", "bsp-ahead", "past-bound-3", "behind-base", "bsp-behind", "negative"],
)
def test_ssp_clock_outside_the_bound_is_invalid(bound: int, base: int, clock: int) -> None:
    with pytest.raises(InvalidArgumentError, match=r"push\.clock"):
        StaleSynchronousPolicy(bound).on_push("w0", base, clock, view(5))


def test_ssp_second_push_for_the_same_clock_is_refused() -> None:
    with pytest.raises(FailedPreconditionError, match=r"w0.*clock 2"):
        StaleSynchronousPolicy(2).on_push("w0", 1, 2, view(1, buffered={1: ("w1",), 2: ("w0",)}))


@pytest.mark.parametrize(("base", "clock"), [(0, 0), (0, 2), (3, 4)])
def test_ssp_buffers_by_clock(base: int, clock: int) -> None:
    assert StaleSynchronousPolicy(2).buffer_clock(base, clock) == clock


SSP_COMPLETE_CASES = [
    # (members, buffered, clock, complete)
    (("w0", "w1"), {0: ("w0",)}, 0, False),
    (("w0", "w1"), {0: ("w0", "w1")}, 0, True),
    # w0 ran a clock ahead; w1 has not pushed yet: clock 0 waits for it.
    (("w0", "w1"), {0: ("w0",), 1: ("w0",)}, 0, False),
    (("w0", "w1"), {0: ("w0",), 1: ("w0", "w1")}, 1, True),
    # A member left mid-clock: the gradients received complete it.
    (("w0",), {0: ("w0", "w1")}, 0, True),
    ((), {0: ("w0",)}, 0, False),
]


def test_ssp_a_clock_a_worker_skipped_does_not_wait_for_it() -> None:
    """w1 pushed clock 1 without clock 0: its clocks only grow, so it skipped 0 for good (with
    bound 0 no worker runs ahead, so this cannot happen there)."""
    skipped = view(0, ("w0", "w1"), buffered={0: ("w0",), 1: ("w0", "w1")})
    assert StaleSynchronousPolicy(2).complete(0, skipped)
    assert not StaleSynchronousPolicy(2).complete(0, view(0, ("w0", "w1"), buffered={0: ("w0",), 1: ("w0",)}))


@pytest.mark.parametrize(("members", "buffered", "clock", "complete"), SSP_COMPLETE_CASES)
@pytest.mark.parametrize("bound", [0, 2])
def test_ssp_complete_waits_for_every_member_at_that_clock(
    members: tuple[str, ...], buffered: dict[int, tuple[str, ...]], clock: int, complete: bool, bound: int
) -> None:
    assert StaleSynchronousPolicy(bound).complete(clock, view(0, members, buffered=buffered)) is complete


@pytest.mark.parametrize(
    ("bound", "clock", "expected"),
    [(2, 0, 0), (2, 1, 0), (2, 2, 1), (2, 7, 6), (0, 0, 1), (0, 5, 6), (3, 3, 1)],
)
def test_ssp_serves_clock_plus_one_minus_bound(bound: int, clock: int, expected: int) -> None:
    assert StaleSynchronousPolicy(bound).serve_after_push(max(0, clock - bound), clock, view(clock)) == expected


@settings(deadline=None)
@given(v=views(), data=st.data(), bound=st.integers(0, 5))
def test_ssp_served_version_keeps_the_next_clock_within_the_bound(
    v: ShardView, data: st.DataObject, bound: int
) -> None:
    base = data.draw(bases(v))
    clock = data.draw(st.integers(base, base + bound))
    served = StaleSynchronousPolicy(bound).serve_after_push(base, clock, v)
    assert served == max(0, clock + 1 - bound)
    assert (clock + 1) - served <= bound


@settings(deadline=None)
@given(v=views(), data=st.data())
def test_ssp_bound_zero_decides_exactly_like_bsp(v: ShardView, data: st.DataObject) -> None:
    base = data.draw(bases(v))
    worker = data.draw(st.sampled_from(WORKERS))
    # With bound 0 the only legal clock is the base version.
    assert _outcome(StaleSynchronousPolicy(0), worker, base, base, v) == _outcome(SyncPolicy(), worker, base, base, v)


# --- async ---------------------------------------------------------------------------

ASYNC_PUSH_CASES = [
    # (worker, base, version, arrived)
    ("w0", 0, 0, ()),
    ("w0", 0, 9, ()),  # very stale: still applied
    ("w0", 9, 9, ()),
    ("w0", 9, 9, ("w0",)),  # arrival bookkeeping is irrelevant to async
    ("w9", 3, 4, ()),  # membership is checked by the shard, not the policy
]


@pytest.mark.parametrize(("worker", "base", "version", "arrived"), ASYNC_PUSH_CASES)
def test_async_always_applies(worker: str, base: int, version: int, arrived: tuple[str, ...]) -> None:
    assert AsyncPolicy().on_push(worker, base, base, view(version, arrived=arrived)) is PushDecision.APPLY
    assert AsyncPolicy(None).on_push(worker, base, base + 3, view(version, arrived=arrived)) is PushDecision.APPLY


@pytest.mark.parametrize(
    ("max_staleness", "base", "version", "expected"),
    [
        (0, 4, 4, PushDecision.APPLY),
        (0, 3, 4, PushDecision.REJECT_STALE),
        (1, 3, 4, PushDecision.APPLY),
        (1, 2, 4, PushDecision.REJECT_STALE),
        (2, 2, 4, PushDecision.APPLY),
        (2, 0, 4, PushDecision.REJECT_STALE),
    ],
)
def test_async_max_staleness_rejects_only_gradients_staler_than_it(
    max_staleness: int, base: int, version: int, expected: PushDecision
) -> None:
    assert AsyncPolicy(max_staleness).on_push("w0", base, base, view(version)) is expected


@settings(deadline=None)
@given(v=views(), clock=st.integers(0, 1010))
def test_async_never_has_a_barrier(v: ShardView, clock: int) -> None:
    assert AsyncPolicy().complete(clock, v) is False
    assert AsyncPolicy(2).complete(clock, v) is False


@pytest.mark.parametrize(("base", "version", "expected"), [(0, 0, 1), (0, 1, 1), (0, 9, 9), (4, 4, 5), (3, 9, 9)])
def test_async_serves_the_newest_version(base: int, version: int, expected: int) -> None:
    assert AsyncPolicy().serve_after_push(base, base, view(version)) == expected
    assert AsyncPolicy(1).serve_after_push(base, base, view(version)) == expected


# --- selection -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "cls", "name"),
    [
        ("sync", SyncPolicy, "sync"),
        ("ssp", StaleSynchronousPolicy, "ssp"),
        ("async", AsyncPolicy, "async"),
        # Each worker pushes one delta per round; the round is a plain barrier.
        ("local_sgd", SyncPolicy, "sync"),
    ],
)
def test_policy_for_picks_the_spec_mode(mode: str, cls: type, name: str) -> None:
    policy = policy_for(parse_job_spec({"mode": mode}))
    assert type(policy) is cls
    assert policy.name == name


def test_policy_for_passes_the_consistency_options() -> None:
    sync = policy_for(parse_job_spec({"mode": "sync", "num_workers": 3, "consistency": {"backup_workers": 1}}))
    assert isinstance(sync, SyncPolicy)
    assert sync.backup_workers == 1
    ssp = policy_for(parse_job_spec({"mode": "ssp", "consistency": {"staleness_bound": 5}}))
    assert isinstance(ssp, StaleSynchronousPolicy)
    assert ssp.bound == 5
    asynchronous = policy_for(parse_job_spec({"mode": "async", "consistency": {"max_staleness": 4}}))
    assert isinstance(asynchronous, AsyncPolicy)
    assert asynchronous.max_staleness == 4
    assert policy_for(parse_job_spec({"mode": "async"})).max_staleness is None  # type: ignore[attr-defined]
    local = policy_for(parse_job_spec({"mode": "local_sgd"}))
    assert isinstance(local, SyncPolicy)
    assert local.backup_workers == 0
