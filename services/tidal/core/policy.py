"""Consistency policies: pure decisions about gradients and versions.

A policy never touches tensors or sockets. Given what has arrived, the shard's version and
the membership, it says what to do with a push, where a buffered gradient goes, when a
buffer is complete and which version a worker may train on next; `ShardState` carries the
decision out. Every policy passes the same contract suite (tests/unit/test_policy.py).

Gradients that are aggregated (sync, ssp, local_sgd) are buffered under a *clock*: the
version they must be applied to. A buffer is applied, as the mean of its gradients, when it
is complete and its clock is the shard's version; buffers complete in clock order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from tidal.core.auto import AutoDecision, AutoTuner
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError
from tidal.core.spec import JobSpec, Mode


class PushDecision(Enum):
    APPLY = "apply"  # fold into the parameters now, alone
    BUFFER = "buffer"  # hold in the buffer of its clock until that buffer completes
    REJECT_STALE = "reject_stale"  # too old to use; refused
    DROP_LATE = "drop_late"  # its clock was applied without it


@dataclass(frozen=True)
class ShardView:
    """What a policy may look at: the shard's version, the job's workers and, per clock, the
    workers whose gradient is buffered there. `members` are the workers barriers wait for: a
    worker that joined while the job ran is one only after its first push to this shard, and
    counts from the clock in `joined` on."""

    version: int
    members: frozenset[str]
    buffered: Mapping[int, frozenset[str]] = field(default_factory=dict)
    joined: Mapping[str, int] = field(default_factory=dict)
    # Members whose push of the job's last clock reached the parameters: they push no more.
    finished: frozenset[str] = frozenset()

    def arrived(self, clock: int) -> frozenset[str]:
        return self.buffered.get(clock, frozenset())

    def expected(self, clock: int) -> frozenset[str]:
        """The members whose gradient the buffer of `clock` waits for. Not one that finished
        unless it pushed here anyway: after a shard was restored from a checkpoint, workers can
        be a clock apart on it, and the one behind must not wait at its last step for a worker
        that is done; with backups a clock can run ahead of the steps, and a worker counted as
        finished that still pushes must still count."""
        arrived = self.arrived(clock)
        return frozenset(
            m for m in self.members if self.joined.get(m, 0) <= clock and (m not in self.finished or m in arrived)
        )

    def expected_unless_skipped(self, clock: int) -> frozenset[str]:
        """`expected`, less the members that already pushed a later clock but not this one
        (clock-keyed modes): a worker's clocks only grow, so it skipped this clock for good and
        waiting for it would stall the shard. tidal's workers count a clock per shard
        (`next_clock`) and skip only clocks the shard has applied, but a client that keeps
        one clock for all shards must not stall one that lags."""
        later = frozenset().union(*(workers for c, workers in self.buffered.items() if c > clock))
        return self.expected(clock) - (later - self.arrived(clock))


class ConsistencyPolicy(Protocol):
    name: str
    # True when gradients are buffered per clock and applied as a barrier's mean (every mode
    # but async): the shard then has a barrier to describe when a wait times out.
    aggregates: bool

    def on_push(self, worker_id: str, base_version: int, clock: int, view: ShardView) -> PushDecision:
        """Decides what happens to a gradient computed from `base_version` at the worker's `clock`."""
        ...

    def buffer_clock(self, base_version: int, clock: int) -> int:
        """The clock whose buffer a BUFFERed gradient joins."""
        ...

    def complete(self, clock: int, view: ShardView) -> bool:
        """True when the buffer of `clock` (the shard's current version) must be applied."""
        ...

    def serve_after_push(self, base_version: int, clock: int, view: ShardView) -> int:
        """Lowest version the pushing worker may train on next."""
        ...

    # Hooks the shard calls at each event; a policy that does not learn from them ignores them.
    def on_served(self, worker_id: str, now: float) -> None:
        """`worker_id` was served parameters at `now` (monotonic seconds)."""
        ...

    def on_arrival(self, worker_id: str, now: float) -> None:
        """A gradient of `worker_id` arrived at `now` (monotonic seconds)."""
        ...

    def on_clock_applied(self, members: frozenset[str]) -> AutoDecision | None:
        """A clock's buffer was applied; returns a change of the policy's settings, if it made one."""
        ...

    def on_membership(self, members: frozenset[str]) -> None:
        """The job's workers are now `members`."""
        ...

    def settings(self) -> tuple[int, int]:
        """(backup_workers, staleness_bound) in force now."""
        ...


class _Fixed:
    """The event hooks of a policy whose settings never change: it learns nothing from events."""

    def on_served(self, worker_id: str, now: float) -> None:
        return None

    def on_arrival(self, worker_id: str, now: float) -> None:
        return None

    def on_clock_applied(self, members: frozenset[str]) -> AutoDecision | None:
        return None

    def on_membership(self, members: frozenset[str]) -> None:
        return None


def next_clock(previous_clock: int, served_version: int) -> int:
    """A worker's clock for its next push to one shard: one past its previous clock there, but
    never behind the version that shard served it, so a straggler whose gradients were dropped
    (backups, auto) rejoins at the current clock. Without drops it is the step. Kept per
    shard: clock - base version then stays within the staleness bound however far apart the
    shards are (one clock for all shards, taken from the newest version any shard served,
    broke the bound on a shard that lagged; tests/unit/test_barrier_liveness.py)."""
    return max(previous_clock + 1, served_version)


def _check_not_ahead(base_version: int, view: ShardView) -> None:
    if base_version > view.version:
        raise InvalidArgumentError(f"push.base_version: {base_version} is ahead of the shard's version {view.version}")


def _check_first_in_clock(worker_id: str, clock: int, view: ShardView) -> None:
    if worker_id in view.arrived(clock):
        raise FailedPreconditionError(f"push: worker {worker_id} already pushed a gradient for clock {clock}")


class SyncPolicy(_Fixed):
    """BSP, optionally with backup workers (Chen et al. 2016): a step is applied as the mean of
    the first `len(members) - backup_workers` gradients of that version; later ones are dropped."""

    name = "sync"
    aggregates = True

    def __init__(self, backup_workers: int = 0) -> None:
        self.backup_workers = backup_workers

    def on_push(self, worker_id: str, base_version: int, clock: int, view: ShardView) -> PushDecision:
        _check_not_ahead(base_version, view)
        if base_version < view.version:
            return PushDecision.DROP_LATE
        _check_first_in_clock(worker_id, base_version, view)
        return PushDecision.BUFFER

    def buffer_clock(self, base_version: int, clock: int) -> int:
        return base_version

    def complete(self, clock: int, view: ShardView) -> bool:
        expected = view.expected(clock)
        needed = max(1, len(expected) - self.backup_workers)
        return bool(expected) and len(view.arrived(clock) & expected) >= needed

    def serve_after_push(self, base_version: int, clock: int, view: ShardView) -> int:
        return base_version + 1

    def settings(self) -> tuple[int, int]:
        return self.backup_workers, 0


class StaleSynchronousPolicy(_Fixed):
    """SSP (Ho et al. 2013) with per-clock aggregation: a worker at clock c trains on any version
    >= c - bound, so fast workers run up to `bound` clocks ahead of the slowest; the gradients of
    clock c are averaged and applied as version c + 1. bound = 0 is exactly BSP."""

    name = "ssp"
    aggregates = True

    def __init__(self, bound: int) -> None:
        self.bound = bound

    def on_push(self, worker_id: str, base_version: int, clock: int, view: ShardView) -> PushDecision:
        _check_not_ahead(base_version, view)
        if clock < base_version or clock - base_version > self.bound:
            raise InvalidArgumentError(
                f"push.clock: clock {clock} with base version {base_version} breaks the staleness bound {self.bound}"
            )
        if clock < view.version:
            return PushDecision.DROP_LATE
        _check_first_in_clock(worker_id, clock, view)
        return PushDecision.BUFFER

    def buffer_clock(self, base_version: int, clock: int) -> int:
        return clock

    def complete(self, clock: int, view: ShardView) -> bool:
        # With bound 0 no worker runs ahead, so none can skip a clock: exactly BSP's rule.
        expected = view.expected_unless_skipped(clock) if self.bound else view.expected(clock)
        return bool(expected) and expected <= view.arrived(clock)

    def serve_after_push(self, base_version: int, clock: int, view: ShardView) -> int:
        return max(0, clock + 1 - self.bound)

    def settings(self) -> tuple[int, int]:
        return 0, self.bound


class AsyncPolicy(_Fixed):
    """ASGD: every gradient is applied on arrival; gradients staler than `max_staleness`
    versions are refused."""

    name = "async"
    aggregates = False

    def __init__(self, max_staleness: int | None = None) -> None:
        self.max_staleness = max_staleness

    def on_push(self, worker_id: str, base_version: int, clock: int, view: ShardView) -> PushDecision:
        _check_not_ahead(base_version, view)
        if self.max_staleness is not None and view.version - base_version > self.max_staleness:
            return PushDecision.REJECT_STALE
        return PushDecision.APPLY

    def buffer_clock(self, base_version: int, clock: int) -> int:
        return base_version

    def complete(self, clock: int, view: ShardView) -> bool:
        return False

    def serve_after_push(self, base_version: int, clock: int, view: ShardView) -> int:
        return max(view.version, base_version + 1)

    def settings(self) -> tuple[int, int]:
        return 0, 0


class AutoPolicy:
    """`mode: auto`: SSP with per-clock aggregation whose clock completes with the first
    `len(members) - backup_workers` gradients; an `AutoTuner` moves both numbers during
    training. Starts as BSP (bound 0, no backups).

    A worker's clock never lags its base version (workers use max(previous clock + 1,
    version)), so a straggler whose gradients are dropped rejoins at the current clock. When
    the tuner lowers the bound, gradients computed under the old one are still used (they
    were within the bound when their parameters were served); the worker then waits for one
    version per step until it is within the new bound again.
    """

    name = "auto"
    aggregates = True

    def __init__(self, tuner: AutoTuner) -> None:
        self.tuner = tuner

    @property
    def bound(self) -> int:
        return self.tuner.settings.staleness_bound

    @property
    def backup_workers(self) -> int:
        return self.tuner.settings.backup_workers

    def on_push(self, worker_id: str, base_version: int, clock: int, view: ShardView) -> PushDecision:
        _check_not_ahead(base_version, view)
        if clock < base_version:
            raise InvalidArgumentError(f"push.clock: clock {clock} is behind its base version {base_version}")
        if clock - base_version > self.tuner.max_staleness_bound:
            raise InvalidArgumentError(
                f"push.clock: clock {clock} with base version {base_version} breaks the highest staleness "
                f"bound {self.tuner.max_staleness_bound}"
            )
        if clock < view.version:
            return PushDecision.DROP_LATE
        _check_first_in_clock(worker_id, clock, view)
        return PushDecision.BUFFER

    def buffer_clock(self, base_version: int, clock: int) -> int:
        return clock

    def complete(self, clock: int, view: ShardView) -> bool:
        expected = view.expected_unless_skipped(clock)
        needed = max(1, len(expected) - self.backup_workers)
        return bool(expected) and len(view.arrived(clock) & expected) >= needed

    def serve_after_push(self, base_version: int, clock: int, view: ShardView) -> int:
        return min(max(0, clock + 1 - self.bound), view.version + 1)

    # The tuner learns the workers' step times from these events.
    def on_served(self, worker_id: str, now: float) -> None:
        self.tuner.served(worker_id, now)

    def on_arrival(self, worker_id: str, now: float) -> None:
        self.tuner.arrived(worker_id, now)

    def on_clock_applied(self, members: frozenset[str]) -> AutoDecision | None:
        return self.tuner.clock_applied(members)

    def on_membership(self, members: frozenset[str]) -> None:
        for gone in self.tuner.known_workers() - members:
            self.tuner.forget(gone)

    def settings(self) -> tuple[int, int]:
        return self.backup_workers, self.bound


def policy_for(spec: JobSpec) -> ConsistencyPolicy:
    """The policy of the job's mode; a mode without one is an error, never a silent default."""
    c = spec.consistency
    match spec.mode:
        case Mode.SYNC:
            return SyncPolicy(c.backup_workers)
        case Mode.SSP:
            return StaleSynchronousPolicy(c.staleness_bound)
        case Mode.ASYNC:
            return AsyncPolicy(c.max_staleness)
        case Mode.LOCAL_SGD:
            # Each worker pushes one delta per round; the round is a plain barrier.
            return SyncPolicy(0)
        case Mode.AUTO:
            tuner = AutoTuner(spec.num_workers, spec.max_auto_backups, c.auto_max_staleness_bound, c.auto_window)
            return AutoPolicy(tuner)
    raise InvalidArgumentError(f"mode: no consistency policy for mode {spec.mode!r}")
