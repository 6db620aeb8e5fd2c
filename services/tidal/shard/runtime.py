"""One job on one shard, seen from asyncio: version waits and serialized parameters.

Wraps the pure `ShardState`: a condition wakes workers waiting for a version, and the
parameters are served to each stream one message at a time, encoded from the live
parameters as gRPC takes each message, so serving holds no copy of the parameters. A serve
still in flight when the parameters change (an async push from another worker) finishes from
a copy of its version that the state's `before_change` hook took just before the change: one
copy per version, and only while a serve of it is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterator
from typing import Protocol

import torch

from tidal.core.auto import AutoDecision
from tidal.core.clock_sums import RangedPush
from tidal.core.compression import params_wire_dtype
from tidal.core.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NonFiniteGradientError,
)
from tidal.core.push_outcomes import PushOutcome, PushResult
from tidal.core.shard_state import ShardState, all_finite
from tidal.core.spec import Mode
from tidal.shard.metrics import REASON_FOR_OUTCOME, JobShardMetrics
from tidal.shard.scratch import SCRATCH_WAIT_S, SharedScratch
from tidal.transport import frames, serde
from tidal.transport.limits import CHUNK_BYTES, PIECE_BYTES


class PayloadTarget(Protocol):
    """Where served parameters are copied when they do not travel inline: a shared-memory
    segment (transport/shm.py) or a bulk channel's outbound block (transport/bulk.py)."""

    def tensor(self, dtype: torch.dtype, numel: int) -> torch.Tensor: ...


log = logging.getLogger(__name__)


class _Progress:
    """How far one inline serve got: the first element of the slice it has not sent."""

    __slots__ = ("start",)

    def __init__(self) -> None:
        self.start = 0


class ShardRuntime:
    def __init__(self, job_id: str, state: ShardState, metrics: JobShardMetrics) -> None:
        self.job_id = job_id
        self.state = state
        self.metrics = metrics
        self.range_start = state.shard_map.ranges[state.shard_index][0]
        self._changed = asyncio.Condition()
        # Inline serves still sending, by version: for each, the first element of the slice
        # it has not sent yet (messages go out in slice order). And of the versions that
        # changed while serves of them were in flight (`_freeze`), the elements from the first
        # one a serve still needs: (that element, a copy from it), dropped with the last serve.
        self._sending: dict[int, list[_Progress]] = {}
        self._frozen: dict[int, tuple[int, torch.Tensor]] = {}
        # The messages' chunk windows, by element size (serde.window_groups): built once.
        self._groups: dict[tuple[int, int], list[list[serde.Window]]] = {}
        self._reply_elements: dict[tuple[int, bool], list[tuple[int, int]]] = {}
        state.before_change = self._freeze
        # Where pushes are assembled before they reach the parameters.
        self.scratch = SharedScratch(state.params, SCRATCH_WAIT_S if state.spec.mode == Mode.ASYNC else 0.0)
        # What parameters travel down to workers in (None: as held).
        self._wire = params_wire_dtype(state.spec.compression)
        # Chunk headers of parameters sent through shared memory or a bulk channel, and of
        # those sent piecewise on one (per message, as inline: `_messages`).
        self._shared_chunks: list[list[frames.Encoded]] | None = None
        self._placed: dict[int, list[list[frames.Encoded]]] = {}  # by element size, as `_groups`
        self._barrier_started: float | None = None
        # Mode auto: every decision of the tuner, oldest first.
        self.history: list[AutoDecision] = []
        self.closed_reason = ""
        metrics.held(state)
        metrics.consistency(*state.policy.settings())

    async def push(
        self,
        worker_id: str,
        push_id: str,
        base_version: int,
        membership_epoch: int,
        grad: torch.Tensor,
        clock: int | None = None,
    ) -> PushResult:
        started = time.perf_counter()
        try:
            result = self.state.push(
                worker_id, push_id, base_version, membership_epoch, grad, clock, now=time.monotonic()
            )
        except NonFiniteGradientError:
            self.metrics.rejected["non_finite"].inc()
            raise
        except InvalidArgumentError:
            self.reject_bad_input()
            raise
        if result.outcome is PushOutcome.BUFFERED and self._barrier_started is None:
            self._barrier_started = started
        if reason := REASON_FOR_OUTCOME.get(result.outcome):
            self.metrics.rejected[reason].inc()
        if result.folded:
            await self._folded(result.folded, time.perf_counter() - started)
        return result

    def open_ranged(
        self, worker_id: str, push_id: str, base_version: int, membership_epoch: int, clock: int | None
    ) -> RangedPush | None:
        """`ShardState.open_ranged`, counting a refusal as bad input."""
        try:
            return self.state.open_ranged(worker_id, push_id, base_version, membership_epoch, clock, time.monotonic())
        except InvalidArgumentError:
            self.reject_bad_input()
            raise

    async def add_ranged(self, push: RangedPush, start: int, values: torch.Tensor, where: str) -> None:
        """Adds part of a ranged push's gradient (refused if not finite) and, when that
        completed ranges, wakes the streams waiting to send them."""
        if not all_finite(values):
            self.state.counters.reject("non_finite")
            self.metrics.rejected["non_finite"].inc()
            raise NonFiniteGradientError(f"{where}: gradient contains NaN or Inf")
        started, before = time.perf_counter(), self.state.applied_to(push.clock)
        if self._barrier_started is None:
            self._barrier_started = started
        folded = self.state.add_ranged(push, start, values, where)  # its caller counts bad input
        if folded:
            await self._folded(folded, time.perf_counter() - started)
        elif self.state.applied_to(push.clock) != before:
            await self._notify()

    def serve_ranged(self, worker_id: str, clock: int, target: PayloadTarget | None = None) -> RangedServe:
        """The parameters of version `clock + 1` for `worker_id`, message by message as their
        ranges are applied: a ranged push's stream sends them while the push goes on (each
        message's payload copied into `target` when it travels on a piecewise bulk channel)."""
        self.state.served(worker_id, now=time.monotonic())
        elements = self.reply_elements(piecewise=target is not None)
        return RangedServe(self, clock, elements, self._messages(clock + 1, self._wire, target))

    def reply_elements(self, piecewise: bool) -> list[tuple[int, int]]:
        """The elements of the slice each message of a parameters reply carries (inline, or
        `piecewise` on a bulk channel), in order."""
        dtype = self._wire or self.state.params.dtype
        key = (dtype.itemsize, piecewise)
        if (elements := self._reply_elements.get(key)) is None:  # the same for every reply: built once
            elements = self._reply_elements[key] = [serde.elements_of(g) for g in self._window_groups(dtype, piecewise)]
        return elements

    async def wait_for_applied(self, clock: int, elements: int, timeout_s: float) -> None:
        """Returns once `elements` of the slice hold version `clock + 1` (or the job ended)."""
        await self._wait_until(lambda: self.state.applied_to(clock) >= elements, clock + 1, timeout_s)

    async def initialize(self, worker_id: str, membership_epoch: int, values: torch.Tensor) -> bool:
        """A worker's initial parameters (ShardState.initialize); wakes the workers waiting
        for version 0 when they are set."""
        try:
            applied = self.state.initialize(worker_id, membership_epoch, values)
        except InvalidArgumentError:
            self.reject_bad_input()
            raise
        if applied:
            await self._notify()
        return applied

    def reject_bad_input(self) -> None:
        self.metrics.rejected["bad_input"].inc()

    async def wait_for_epoch(self, membership_epoch: int, timeout_s: float) -> None:
        """Lets a sender that already knows a newer membership epoch (a worker that just
        joined) wait, bounded, until the coordinator's update reaches this shard too; the
        fencing check that follows refuses it if the update never came."""
        if membership_epoch <= self.state.membership_epoch:
            return

        def caught_up() -> bool:
            return bool(self.closed_reason) or self.state.membership_epoch >= membership_epoch

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(caught_up), timeout_s)

    async def set_membership(self, membership_epoch: int, workers: list[str]) -> None:
        started = time.perf_counter()
        folded = self.state.set_membership(membership_epoch, workers)
        if folded:
            await self._folded(folded, time.perf_counter() - started)
        await self._notify()

    async def _folded(self, staleness: tuple[int, ...], apply_s: float) -> None:
        """Records gradients that reached the parameters and wakes the workers waiting."""
        m = self.metrics
        m.applied.inc(len(staleness))
        for s in staleness:
            m.staleness.observe(s)
        m.apply.observe(apply_s)
        if self._barrier_started is not None:
            m.barrier_wait.observe(time.perf_counter() - self._barrier_started)
            self._barrier_started = None
        m.held(self.state)
        self._report_decisions()
        await self._notify()

    def _report_decisions(self) -> None:
        """Mode auto: logs and exports what the tuner decided since the last call."""
        decisions: list[AutoDecision] = self.state.auto_decisions
        if not decisions:
            return
        for decision in decisions:
            log.info("job %s shard %d: auto: %s", self.job_id, self.state.shard_index, decision.reason)
            self.metrics.decisions.inc()
        self.metrics.consistency(*self.state.policy.settings())
        self.history.extend(decisions)
        decisions.clear()

    async def close(self, reason: str) -> None:
        self.closed_reason = reason
        await self._notify()

    async def wait_for_version(self, version: int, timeout_s: float) -> None:
        """Returns once the shard's version is at least `version`; not while the next version
        is applied in part (the parameters are then of no one version)."""
        await self._wait_until(lambda: self.state.version >= version and not self.state.partial, version, timeout_s)

    async def _wait_until(self, reached: Callable[[], bool], version: int, timeout_s: float) -> None:
        """Waits until `reached` (or the job ended); a timeout names `version` and the barrier."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: bool(self.closed_reason) or reached()), timeout_s)
            except TimeoutError:
                raise DeadlineExceededError(
                    f"shard {self.state.shard_index}: version {version} not reached within {timeout_s:.0f}s "
                    f"({self.state.barrier_report()})"
                ) from None
        if self.closed_reason:
            raise FailedPreconditionError(f"job_id: job {self.job_id} ended on this shard: {self.closed_reason}")

    def serve(self, worker_id: str, target: PayloadTarget | None = None, piecewise: bool = False) -> Iterator[bytes]:
        """The current parameters for `worker_id`, in the job's parameter wire dtype (bf16 when
        the job compresses with bf16), noting what it will train on (DC-ASGD). Inline, each
        message is encoded when it is asked for (`_messages`); on a stream with shared memory
        or a bulk channel they are copied into `target` (the segment, or the block to send)
        and the messages say where (`piecewise`: message by message, as inline). A generator:
        its first message is taken at once; close it if the stream ends early."""
        self.state.served(worker_id, now=time.monotonic())
        version = self.state.version
        if target is None or piecewise:
            yield from self._messages(version, self._wire, target)
            return
        flat = self.state.params.detach()
        dtype = self._wire or flat.dtype
        target.tensor(dtype, flat.numel()).copy_(flat)
        if self._shared_chunks is None:  # the same headers for every version: built once
            self._shared_chunks = serde.shared_chunks(dtype, self.state.segments, self.range_start)
        groups = self._shared_chunks
        messages = [frames.encode_params(version, g, i == len(groups) - 1) for i, g in enumerate(groups)]
        self.metrics.sent.inc(flat.numel() * dtype.itemsize + sum(len(m) for m in messages))
        yield from messages

    def served_bytes(self) -> int:
        """Payload bytes of one parameters reply (the slice in the parameter wire dtype)."""
        return self.state.params.numel() * self.served_itemsize()

    def served_itemsize(self) -> int:
        """Bytes per element of the parameters served (the parameter wire dtype)."""
        return (self._wire or self.state.params.dtype).itemsize

    def params(self) -> Iterator[bytes]:
        """The current parameters as held (float32), encoded as ExchangeResponse messages
        carrying Params (transport/frames.py): the job's result."""
        if not self.state.initialized:
            raise FailedPreconditionError(f"job_id: job {self.job_id} has no parameters yet (its workers send them)")
        return self._messages(self.state.version, None)

    def _messages(self, version: int, wire: torch.dtype | None, target: PayloadTarget | None = None) -> Iterator[bytes]:
        """The parameters of `version` (the current one when called), one Params message at a
        time, each encoded from the live parameters, or from the copy `_freeze` kept if they
        changed since; with a `target`, each message's payload is copied there instead and
        the message says where (a piecewise bulk channel sends those bytes after it)."""
        dtype = wire or self.state.params.dtype
        groups = self._window_groups(dtype, piecewise=target is not None)
        placed = self._placed.get(dtype.itemsize)
        if target is not None and placed is None:  # the same headers for every version: built once
            placed = self._placed[dtype.itemsize] = [serde.placed_windows(g, dtype) for g in groups]
        progress = _Progress()
        serves = self._sending.setdefault(version, [])
        serves.append(progress)
        try:
            for i, windows in enumerate(groups):
                source, base = self.state.params.detach(), 0
                if (frozen := self._frozen.get(version)) is not None:  # changed since: `_freeze` kept the rest
                    base, source = frozen
                start, end = serde.elements_of(windows)
                if target is None:
                    chunks, payload = serde.encode_windows(source, windows, dtype, base), 0
                else:
                    target.tensor(dtype, end)[start:end].copy_(source[start - base : end - base])
                    chunks, payload = placed[i], (end - start) * dtype.itemsize  # type: ignore[index]
                message = frames.encode_params(version, chunks, i == len(groups) - 1)
                # Encoded (copied): the next message starts after it (windows are in slice order).
                progress.start = end
                self.metrics.sent.inc(len(message) + payload)
                yield message
        finally:
            serves.remove(progress)
            if not serves:
                del self._sending[version]
                self._frozen.pop(version, None)

    def _window_groups(self, dtype: torch.dtype, piecewise: bool = False) -> list[list[serde.Window]]:
        """The messages' windows: of CHUNK_BYTES inline, of PIECE_BYTES on a piecewise bulk channel."""
        max_bytes = PIECE_BYTES if piecewise else CHUNK_BYTES
        groups = self._groups.get((dtype.itemsize, max_bytes))
        if groups is None:
            groups = self._groups[(dtype.itemsize, max_bytes)] = serde.window_groups(
                dtype.itemsize, self.state.segments, self.range_start, max_bytes
            )
        return groups

    def _freeze(self) -> None:
        """The state is about to change the parameters: serves of the current version still
        sending finish from a copy of what they have not sent yet."""
        version = self.state.version
        serves = self._sending.get(version)
        if serves and version not in self._frozen:
            first = min(progress.start for progress in serves)
            self._frozen[version] = (first, self.state.params.detach()[first:].clone())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class RangedServe:
    """One worker's parameters of the version its ranged push makes, handed out message by
    message as far as that version is applied (`ShardRuntime.serve_ranged`)."""

    def __init__(
        self, runtime: ShardRuntime, clock: int, elements: list[tuple[int, int]], messages: Iterator[bytes]
    ) -> None:
        self._runtime = runtime
        self._clock = clock
        # The elements of the slice each message carries, in order.
        self._elements = elements
        self._messages = messages
        self._sent = 0

    @property
    def done(self) -> bool:
        return self._sent == len(self._elements)

    @property
    def next_end(self) -> int:
        """Elements that must be applied before the next message can go."""
        return self._elements[self._sent][1]

    def ready(self) -> list[tuple[tuple[int, int], bytes]]:
        """The messages whose ranges are applied and were not handed out yet, each with the
        elements it carries."""
        applied = self._runtime.state.applied_to(self._clock)
        out = []
        while not self.done and self.next_end <= applied:
            out.append((self._elements[self._sent], next(self._messages)))
            self._sent += 1
        return out

    def close(self) -> None:
        """Ends the serve (its copy of a version that changed since, if any, is dropped)."""
        if isinstance(self._messages, Generator):
            self._messages.close()
