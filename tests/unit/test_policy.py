"""Unit tests for tidal.core.policy: a contract every consistency policy must honour,
then table-driven cases for each policy's own decisions.

To cover a new policy, add its factory to `POLICIES`; the contract suite runs on it
unchanged. Its own decisions go into a table next to the sync and async ones.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# isort: split
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError
from tidal.core.policy import AsyncPolicy, ConsistencyPolicy, PushDecision, ShardView, SyncPolicy, policy_for
from tidal.core.spec import parse_job_spec

# Every policy, by factory. A new policy is covered by the contract once it is listed here.
POLICIES: list[Callable[[], ConsistencyPolicy]] = [SyncPolicy, AsyncPolicy]
POLICY_IDS = [factory.__name__ for factory in POLICIES]

WORKERS = ("w0", "w1", "w2", "w3")


def view(version: int, members: tuple[str, ...] = ("w0", "w1"), arrived: tuple[str, ...] = ()) -> ShardView:
    return ShardView(version, frozenset(members), frozenset(arrived))


@st.composite
def views(draw: st.DrawFn) -> ShardView:
    version = draw(st.integers(0, 1000))
    members = draw(st.frozensets(st.sampled_from(WORKERS)))
    arrived = draw(st.frozensets(st.sampled_from(WORKERS)))
    return ShardView(version, members, arrived)


@pytest.fixture(params=POLICIES, ids=POLICY_IDS)
def policy(request: pytest.FixtureRequest) -> ConsistencyPolicy:
    return request.param()


# --- contract: every policy ----------------------------------------------------------


def test_policy_names_are_unique_non_empty_strings() -> None:
    names = [factory().name for factory in POLICIES]
    assert all(isinstance(n, str) and n for n in names)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(("version", "base"), [(0, 1), (5, 6), (5, 100), (0, 2**40)])
def test_contract_base_version_ahead_of_shard_is_invalid(policy: ConsistencyPolicy, version: int, base: int) -> None:
    with pytest.raises(InvalidArgumentError, match=r"push\.base_version"):
        policy.on_push("w0", base, view(version))


@settings(deadline=None)
@given(v=views(), data=st.data())
def test_contract_base_version_ahead_is_invalid_for_any_view(v: ShardView, data: st.DataObject) -> None:
    base = data.draw(st.integers(v.version + 1, v.version + 1000))
    worker = data.draw(st.sampled_from(WORKERS))
    for factory in POLICIES:
        with pytest.raises(InvalidArgumentError, match=r"push\.base_version"):
            factory().on_push(worker, base, v)


@settings(deadline=None)
@given(v=views(), data=st.data())
def test_contract_serve_after_push_is_never_below_base_plus_one(v: ShardView, data: st.DataObject) -> None:
    base = data.draw(st.integers(0, v.version))
    for factory in POLICIES:
        served = factory().serve_after_push(base, v)
        assert served >= base + 1
        # A worker is never told to wait for more than the shard's next version.
        assert served <= v.version + 1


@settings(deadline=None)
@given(v=views(), data=st.data())
def test_contract_on_push_returns_a_decision_for_a_first_push(v: ShardView, data: st.DataObject) -> None:
    base = data.draw(st.integers(0, v.version))
    for factory in POLICIES:
        # A worker that has not pushed for this version yet always gets a decision.
        worker = next((w for w in WORKERS if w not in v.arrived), None)
        if worker is None:
            continue
        assert isinstance(factory().on_push(worker, base, v), PushDecision)


@pytest.mark.parametrize("arrived", [(), ("w0",), ("w0", "w1")])
def test_contract_empty_membership_never_completes_a_barrier(
    policy: ConsistencyPolicy, arrived: tuple[str, ...]
) -> None:
    assert policy.barrier_complete(view(3, members=(), arrived=arrived)) is False


def test_contract_decisions_do_not_depend_on_call_history(policy: ConsistencyPolicy) -> None:
    """Policies are pure: asking twice gives the same answer."""
    v = view(4, arrived=("w1",))
    assert policy.on_push("w0", 4, v) == policy.on_push("w0", 4, v)
    assert policy.barrier_complete(v) == policy.barrier_complete(v)
    assert policy.serve_after_push(2, v) == policy.serve_after_push(2, v)


# --- sync ----------------------------------------------------------------------------

SYNC_PUSH_CASES = [
    # (worker, base, version, members, arrived, expected)
    ("w0", 0, 0, ("w0", "w1"), (), PushDecision.BUFFER),
    ("w1", 0, 0, ("w0", "w1"), ("w0",), PushDecision.BUFFER),
    ("w0", 7, 7, ("w0",), (), PushDecision.BUFFER),
    ("w0", 6, 7, ("w0", "w1"), (), PushDecision.DROP_LATE),
    ("w0", 0, 7, ("w0", "w1"), (), PushDecision.DROP_LATE),
    # Late is decided before "already arrived": a stale retry is dropped, not an error.
    ("w0", 6, 7, ("w0", "w1"), ("w0",), PushDecision.DROP_LATE),
]


@pytest.mark.parametrize(("worker", "base", "version", "members", "arrived", "expected"), SYNC_PUSH_CASES)
def test_sync_on_push(
    worker: str,
    base: int,
    version: int,
    members: tuple[str, ...],
    arrived: tuple[str, ...],
    expected: PushDecision,
) -> None:
    assert SyncPolicy().on_push(worker, base, view(version, members, arrived)) is expected


def test_sync_second_push_from_same_worker_in_one_version_is_refused() -> None:
    with pytest.raises(FailedPreconditionError, match=r"w0.*version 3"):
        SyncPolicy().on_push("w0", 3, view(3, ("w0", "w1"), ("w0",)))


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
    assert SyncPolicy().barrier_complete(view(2, members, arrived)) is complete


@settings(deadline=None)
@given(v=views())
def test_sync_barrier_property(v: ShardView) -> None:
    expected = bool(v.members) and v.members.issubset(v.arrived)
    assert SyncPolicy().barrier_complete(v) is expected


def test_sync_member_leaving_mid_step_completes_the_barrier() -> None:
    policy = SyncPolicy()
    before = view(5, ("w0", "w1", "w2"), ("w0", "w1"))
    assert not policy.barrier_complete(before)
    after = ShardView(before.version, before.members - {"w2"}, before.arrived)
    assert policy.barrier_complete(after)


@pytest.mark.parametrize(("base", "version", "expected"), [(0, 0, 1), (3, 3, 4), (2, 5, 3)])
def test_sync_serves_the_version_after_the_base(base: int, version: int, expected: int) -> None:
    assert SyncPolicy().serve_after_push(base, view(version)) == expected


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
    assert AsyncPolicy().on_push(worker, base, view(version, arrived=arrived)) is PushDecision.APPLY


@settings(deadline=None)
@given(v=views())
def test_async_never_has_a_barrier(v: ShardView) -> None:
    assert AsyncPolicy().barrier_complete(v) is False


@pytest.mark.parametrize(("base", "version", "expected"), [(0, 0, 1), (0, 1, 1), (0, 9, 9), (4, 4, 5), (3, 9, 9)])
def test_async_serves_the_newest_version(base: int, version: int, expected: int) -> None:
    assert AsyncPolicy().serve_after_push(base, view(version)) == expected


# --- selection -----------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "cls"), [("sync", SyncPolicy), ("async", AsyncPolicy)])
def test_policy_for_picks_the_spec_mode(mode: str, cls: type) -> None:
    policy = policy_for(parse_job_spec({"mode": mode}))
    assert isinstance(policy, cls)
    assert policy.name == mode
