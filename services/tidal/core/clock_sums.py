"""The barrier modes' sums of gradients, one per clock, and applying them: a part of ShardState.

A clock's gradients are summed as they arrive and applied as their mean once the policy says
the clock is complete. In plain sync the sum is a RangeBuffer (core/range_barrier.py), and a
push is taken range by range from its first message on (`open_ranged`), each message's
chunks are added to the clock's sum as they arrive (`add_ranged`), and every range that every
worker's gradient covers is applied at once, so its parameters can go back down while the
rest of the gradients still come up. `finish_ranged` closes the push at its last message.
While a clock is applied in part (`partial`) the slice holds no one version: nothing may
serve or checkpoint it until the clock is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.policy import PushDecision, SyncPolicy
from tidal.core.push_outcomes import PushOutcome, PushResult
from tidal.core.range_barrier import RangeBuffer

if TYPE_CHECKING:
    from tidal.core.shard_state import ShardState


@dataclass
class WholeSum:
    """Gradients waiting for their clock to complete: a running sum and who contributed."""

    total: torch.Tensor
    # worker -> base version of its gradient
    bases: dict[str, int] = field(default_factory=dict)
    # Contributors whose gradient is of the job's last clock.
    finals: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class RangedPush:
    """A push taken range by range (`ShardState.open_ranged`): whose, and for which clock."""

    worker_id: str
    push_id: str
    clock: int
    staleness: int


class ClockSums:
    """ShardState's methods for its clocks' sums (ShardState inherits them)."""

    @property
    def partial(self: ShardState) -> bool:
        """True while the current clock is applied in part: the parameters are of no one version."""
        buffer = self._buffers.get(self.version)
        return isinstance(buffer, RangeBuffer) and buffer.applied > 0

    @property
    def takes_ranges(self: ShardState) -> bool:
        """True when a push may be taken range by range: the job is plain sync (no backup
        workers, whose barrier may complete without a worker's whole gradient)."""
        return isinstance(self.policy, SyncPolicy) and self.policy.backup_workers == 0

    def applied_to(self: ShardState, clock: int) -> int:
        """How many elements of the slice (from its start) hold version `clock + 1` or later."""
        if self.version > clock:
            return self.numel
        buffer = self._buffers.get(clock)
        return buffer.applied if isinstance(buffer, RangeBuffer) and clock == self.version else 0

    def open_ranged(
        self: ShardState,
        worker_id: str,
        push_id: str,
        base_version: int,
        membership_epoch: int,
        clock: int | None = None,
        now: float | None = None,
    ) -> RangedPush | None:
        """Starts taking a push range by range, from the header of its first message, when the
        job is plain sync and the push is one of the current clock's; None otherwise (and for a
        push already taken, or late): the caller assembles it whole and calls `push`. A push
        resent after a reconnect resumes where its chunks stopped."""
        self._check_entry(worker_id, membership_epoch, push_id, base_version)
        clock = base_version if clock is None else clock
        if self._pushes.get(worker_id, push_id) is not None or clock != base_version:
            return None
        buffer = self._buffer_for(base_version)
        if not isinstance(buffer, RangeBuffer) or base_version >= self.spec.target_version:
            return None
        if buffer.push_ids.get(worker_id) == push_id:
            return RangedPush(worker_id, push_id, base_version, self.version - base_version)
        view = self.view()
        if self.policy.on_push(worker_id, base_version, clock, view) is not PushDecision.BUFFER:
            return None
        if self._missed_start(worker_id, base_version):
            return None
        if now is not None:
            self.policy.on_arrival(worker_id, now)
        if worker_id in self._not_started:
            self._not_started.discard(worker_id)
            self._joined[worker_id] = base_version
        buffer.join(worker_id, push_id, base_version, clock >= self.spec.target_version - 1)
        return RangedPush(worker_id, push_id, base_version, view.version - base_version)

    def add_ranged(self: ShardState, push: RangedPush, start: int, values: torch.Tensor, where: str) -> tuple[int, ...]:
        """Adds elements [start, start + len(values)) of a ranged push's gradient (finite: the
        caller checked) and applies what became complete; returns the staleness of the
        gradients folded in if that completed the clock."""
        buffer = self._buffers.get(push.clock)
        if not isinstance(buffer, RangeBuffer) or buffer.push_ids.get(push.worker_id) != push.push_id:
            # The clock completed without this push (its worker was dropped), or it was resent elsewhere.
            return ()
        buffer.add(push.worker_id, start, values, where)
        return self._apply_complete_buffers()

    def finish_ranged(self: ShardState, push: RangedPush) -> PushResult:
        """The push's last message came: its gradient must cover the slice. Remembered as taken."""
        buffer = self._buffers.get(push.clock)
        mine = isinstance(buffer, RangeBuffer) and buffer.push_ids.get(push.worker_id) == push.push_id
        if mine and (have := buffer.prefix[push.worker_id]) != self.numel:  # type: ignore[union-attr]
            raise InvalidArgumentError(f"push.chunks: chunks cover {have} of {self.numel} elements")
        outcome = PushOutcome.APPLIED if self.version > push.clock else PushOutcome.BUFFERED
        result = PushResult(outcome, self.version, push.staleness, push.clock + 1, ())
        return self._record(push.worker_id, push.push_id, result)

    def _missed_start(self: ShardState, worker_id: str, clock: int) -> bool:
        """A new contributor to a clock already applied in part is late for it, unless nobody
        else is left to complete it (every worker that began it is gone): then it joins for
        the ranges still to come, or the clock would never complete."""
        buffer = self._buffers.get(clock)
        if not isinstance(buffer, RangeBuffer) or buffer.applied == 0 or worker_id in buffer.prefix:
            return False
        return bool(self.view().expected(clock) - {worker_id})

    def _apply_ranges(self: ShardState, buffer: RangeBuffer) -> bool:
        """Applies what became complete of the current clock's ranged buffer; True when that
        was the rest of the slice (the clock is applied, the version moved on)."""
        ready = buffer.complete_to(self.view().expected(self.version))
        if not buffer.due(ready):
            return False
        if buffer.applied == 0 and ready == self.numel and len(set(buffer.prefix.values())) == 1:
            del self._buffers[self.version]
            self._step(buffer.total.div_(len(buffer.prefix)))  # all of it at once: the plain step
            return True
        if buffer.applied == 0 and self.before_change is not None:
            self.before_change()
        with self._scheduled_lr():
            for lo, hi, contributors in buffer.pieces(buffer.applied, ready):
                self._ranges.step(lo, hi, buffer.total[lo:hi].div_(contributors))
        buffer.applied = ready
        if ready < self.numel:
            return False
        del self._buffers[self.version]
        self._ranges.finish_version()
        self._next_version()
        return True

    def _add_to_buffer(
        self: ShardState, clock: int, worker_id: str, push_id: str, base_version: int, grad: torch.Tensor, final: bool
    ) -> None:
        """Adds a whole gradient to the sum of its clock."""
        buffer = self._buffer_for(clock)
        if isinstance(buffer, RangeBuffer):
            buffer.join(worker_id, push_id, base_version, final)
            buffer.add(worker_id, 0, grad, "push.chunks")
            return
        if buffer is None:
            # The clock's first gradient starts the sum as a copy: one pass over the slice
            # instead of zeroing a buffer and adding to it (`grad` is scratch, reused later).
            buffer = self._buffers[clock] = WholeSum(grad.detach().clone())
        else:
            buffer.total.add_(grad)
        buffer.bases[worker_id] = base_version
        if final:
            buffer.finals.add(worker_id)

    def _buffer_for(self: ShardState, clock: int) -> WholeSum | RangeBuffer | None:
        """The buffer of `clock`: a new plain sync clock's is a RangeBuffer, once the optimizer
        has its state (its first step creates it from a whole gradient)."""
        buffer = self._buffers.get(clock)
        if buffer is None and clock == self.version and self.takes_ranges and self._ranges.ready():
            buffer = self._buffers[clock] = RangeBuffer(torch.empty_like(self.params.detach()))
        return buffer

    def _apply_complete_buffers(self: ShardState) -> tuple[int, ...]:
        """Applies, in clock order, every buffer that is complete; returns the staleness of
        each gradient folded in."""
        folded: list[int] = []
        while (buffer := self._buffers.get(self.version)) is not None and buffer.bases:
            if isinstance(buffer, RangeBuffer):
                if not self._apply_ranges(buffer):
                    break
            elif self.policy.complete(self.version, self.view()):
                del self._buffers[self.version]
                self._step(buffer.total.div_(len(buffer.bases)))
            else:
                break
            self._finished |= buffer.finals
            folded += [self.version - 1 - base for base in buffer.bases.values()]
            self.counters.updates_applied += len(buffer.bases)
            if decision := self.policy.on_clock_applied(self.members):
                self.auto_decisions.append(decision)
        for staleness in folded:
            self.counters.staleness.record(staleness)
        return tuple(folded)
