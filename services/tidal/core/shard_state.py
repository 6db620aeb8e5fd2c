"""The domain of one parameter shard for one job, without sockets or asyncio.

Holds the shard's flat parameter slice and its torch.optim optimizer, checks who may push,
deduplicates each member's pushes by id, asks the consistency policy what to do with each
gradient and carries the decision out. A rejected push never touches the parameters: every
check runs before the first write. Push ids are a member's own: dedup is keyed by (member,
push id) with a bounded memory per member (core/push_memory.py), so no member's ids, valid or
not, can change how another member's pushes are handled. What a push comes to, and the
shard's counts of them, are core/push_outcomes.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

from tidal.core import eager_optim
from tidal.core.auto import AutoDecision
from tidal.core.clock_sums import ClockSums, WholeSum
from tidal.core.digests import values_digest
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError, NonFiniteGradientError
from tidal.core.optim import build_shard_optimizer
from tidal.core.policy import ConsistencyPolicy, PushDecision, ShardView, policy_for
from tidal.core.push_memory import PUSH_IDS_PER_MEMBER, PushMemory
from tidal.core.push_outcomes import PushOutcome, PushResult, ShardCounters
from tidal.core.range_barrier import RangeBuffer
from tidal.core.range_step import RangeStepper
from tidal.core.schedule import lr_factor
from tidal.core.shard_map import Segment, ShardMap
from tidal.core.spec import JobSpec, Mode
from tidal.core.torch_dtypes import torch_dtype

# Longest push id accepted, in characters (tidal's are "worker-id:step").
MAX_PUSH_ID_CHARS = 256


def all_finite(t: torch.Tensor) -> bool:
    """True when no element is NaN or Inf. A NaN or Inf makes the sum NaN or Inf, so a finite
    sum proves it in one pass without the boolean tensor `isfinite` allocates (~100x cheaper
    on a 40 MB gradient); only a sum that overflowed from finite values needs the full check."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


# Outcomes whose gradient is in the parameters or in a barrier's sum: a repeat is a duplicate.
_TAKEN = frozenset({PushOutcome.APPLIED, PushOutcome.BUFFERED})


class ShardState(ClockSums):
    def __init__(
        self,
        spec: JobSpec,
        shard_index: int,
        shard_map: ShardMap,
        initial: torch.Tensor | None,
        membership_epoch: int,
        workers: Iterable[str],
        policy: ConsistencyPolicy | None = None,
    ) -> None:
        """`initial`: the slice's parameters (a checkpoint's, a test's); None for a new job,
        whose shard has no parameters (version -1) until a worker sends them (`initialize`)."""
        start, end = shard_map.ranges[shard_index]
        # False until the job's first parameters arrive: a new job's shard builds no model.
        self.initialized = initial is not None
        # The digest of the initial slice a worker sent (core/digests.py): every worker that
        # opens a stream later is checked against it. None: not known (given, or restored).
        self.initial_digest: str | None = None
        if initial is None:
            initial = torch.zeros(end - start, dtype=torch_dtype(shard_map.tensors[0].dtype))
        elif initial.numel() != end - start or initial.dim() != 1:
            raise InvalidArgumentError(f"initial: expected a flat tensor of {end - start} elements")
        self.spec = spec
        self.shard_index = shard_index
        self.shard_map = shard_map
        self.segments: list[Segment] = shard_map.segments(shard_index)
        self.params = initial.detach().clone().requires_grad_(True)
        self.optimizer = build_shard_optimizer(spec, self.params)
        self._base_lr = float(self.optimizer.param_groups[0]["lr"])
        # In local SGD the schedule belongs to the workers' inner optimizer, not the outer step.
        self._schedule = None if spec.mode == Mode.LOCAL_SGD else spec.optimizer.schedule
        self.policy = policy or policy_for(spec)
        self.version = 0 if self.initialized else -1
        self.membership_epoch = membership_epoch
        self.members: frozenset[str] = frozenset(workers)
        # Fencing: the epoch at which each member was admitted; its pushes must carry at least
        # that epoch (a survivor's push from before an unrelated change is still its own).
        self._admitted: dict[str, int] = dict.fromkeys(self.members, membership_epoch)
        # Workers that joined while the job ran: the clock from which barriers wait for them,
        # set by the joiner's first push here. Until then it is in `_not_started`, and no
        # barrier waits for it: a joiner still building its model, or waiting for this shard
        # to serve the version another shard already serves, must not stall the others.
        self._joined: dict[str, int] = {}
        self._not_started: set[str] = set()
        self.counters = ShardCounters()
        self._buffers: dict[int, WholeSum | RangeBuffer] = {}
        # Applies a plain sync step range by range (core/range_barrier.py).
        self._ranges = RangeStepper(self.optimizer, self.params)
        # Each member's latest push ids and what became of each (deduplication).
        self._pushes = PushMemory()
        # DC-ASGD: the parameters each worker was last served (one slice per worker).
        self._served: dict[str, torch.Tensor] = {}
        # auto: the tuner's decisions so far, oldest first.
        self.auto_decisions: list[AutoDecision] = []
        # Barrier modes: workers whose push of the job's last clock was folded in (ShardView).
        self._finished: set[str] = set()
        # Called right before the parameters change (an optimizer step, the initial values):
        # the runtime keeps a copy of the version for serves of it still in flight.
        self.before_change: Callable[[], None] | None = None

    def initialize(self, worker_id: str, membership_epoch: int, values: torch.Tensor) -> bool:
        """A worker's initial parameters for this slice, as its model built them: they become
        version 0 (True). Once set, a worker's equal values change nothing (False); different
        ones are refused, naming the field, and nothing changes."""
        self.check_sender(worker_id, membership_epoch)
        if values.dim() != 1 or values.numel() != self.params.numel():
            raise InvalidArgumentError(
                f"init.chunks: {values.numel()} values for a slice of {self.params.numel()} parameters"
            )
        if not all_finite(values):
            raise InvalidArgumentError("init.chunks: the initial parameters hold NaN or Inf")
        if self.initialized:
            # Against the values the shard started from, not the ones it holds: a worker that saw
            # no parameters when it opened may send its slice after others already pushed.
            if self.initial_digest is not None and values_digest([values.to(self.params.dtype)]) != self.initial_digest:
                raise InvalidArgumentError(
                    f"init.chunks: {worker_id}'s initial parameters differ from those this shard started from "
                    "(do the workers build the model from the spec's seed alone?)"
                )
            return False
        if self.before_change is not None:
            self.before_change()
        with torch.no_grad():
            self.params.copy_(values)
        self.initialized, self.version = True, 0
        self.initial_digest = values_digest([self.params])
        return True

    def check_initial_digest(self, worker_id: str, digest: str) -> None:
        """A worker that opens a stream says what its initial slice was: it must be the one this
        shard started from (so no worker, first to arrive or not, chose the job's start alone)."""
        if digest and self.initial_digest is not None and digest != self.initial_digest:
            raise InvalidArgumentError(
                f"open.init_digest: {worker_id}'s initial parameters differ from those this shard was "
                "given by the first worker to reach it (do the workers build the model from the spec's seed alone?)"
            )

    @property
    def numel(self) -> int:
        return self.params.numel()

    @property
    def compensates(self) -> bool:
        return self.spec.mode == Mode.ASYNC and self.spec.consistency.compensation == "dc_asgd"

    def view(self) -> ShardView:
        buffered = {clock: frozenset(b.bases) for clock, b in self._buffers.items()}
        waited_for = self.members - self._not_started
        return ShardView(self.version, waited_for, buffered, self._joined, frozenset(self._finished))

    def check_sender(self, worker_id: str, membership_epoch: int) -> None:
        """Fencing: the sender must be a member, and its epoch no older than its admission
        (a worker dropped and readmitted cannot replay what it sent before) and no newer than
        the shard's (the shard must learn of a change before it acts on it)."""
        if membership_epoch > self.membership_epoch:
            raise FailedPreconditionError(
                f"membership_epoch: {membership_epoch} is ahead of this shard's epoch {self.membership_epoch}"
            )
        if worker_id not in self.members:
            raise FailedPreconditionError(
                f"worker_id: {worker_id!r} is not a member of job {self.spec.name!r} "
                f"at membership epoch {self.membership_epoch}"
            )
        if membership_epoch < (admitted := self._admitted[worker_id]):
            raise FailedPreconditionError(
                f"membership_epoch: {membership_epoch} predates epoch {admitted}, when {worker_id} was admitted "
                f"(current epoch {self.membership_epoch})"
            )

    def barrier_report(self) -> str:
        """What this shard's next step waits for, in words (for a timeout's message): the
        current clock's contributors and missing members, and the later clocks buffered."""
        view = self.view()
        arrived = view.arrived(self.version)
        ranged = self._buffers.get(self.version)
        if isinstance(ranged, RangeBuffer):  # a gradient on its way counts once all of it came
            arrived = frozenset(w for w, have in ranged.prefix.items() if have == self.numel)
        missing = sorted(view.expected(self.version) - arrived)
        parts = [f"at version {self.version}"]
        if self.policy.aggregates:
            parts.append(
                f"clock {self.version} has gradients from {', '.join(sorted(arrived)) or 'nobody'}"
                f" and waits for {', '.join(missing) or 'nobody'}"
            )
            if isinstance(ranged, RangeBuffer) and (coming := ranged.coming()):
                parts.append(f"on their way: {coming}")
            later = [f"{c} ({', '.join(sorted(w))})" for c, w in sorted(view.buffered.items()) if c > self.version]
            if later:
                parts.append(f"later clocks buffered: {'; '.join(later)}")
            if self._not_started:
                parts.append(f"joined, no push yet: {', '.join(sorted(self._not_started))}")
        return "; ".join(parts)

    def served(self, worker_id: str, now: float | None = None) -> None:
        """Notes that `worker_id` now trains on the current parameters (DC-ASGD needs them;
        `mode: auto` times the worker's step from `now`, monotonic seconds)."""
        if now is not None:
            self.policy.on_served(worker_id, now)
        if self.compensates:
            backup = self._served.get(worker_id)
            if backup is None:
                self._served[worker_id] = self.params.detach().clone()
            else:
                backup.copy_(self.params.detach())

    def push(
        self,
        worker_id: str,
        push_id: str,
        base_version: int,
        membership_epoch: int,
        grad: torch.Tensor,
        clock: int | None = None,
        now: float | None = None,
    ) -> PushResult:
        """Handles one complete gradient push. Raises before any write if it is invalid.
        `clock` is the worker's clock (SSP, auto); it defaults to the base version. `now`
        (monotonic seconds) is when it arrived, for `mode: auto`."""
        # Validation first: a repeated id never lets an invalid gradient through as a duplicate.
        self._check_entry(worker_id, membership_epoch, push_id, base_version)
        self._check_gradient(grad)
        if (previous := self._pushes.get(worker_id, push_id)) is not None:
            return self._repeat(previous)
        clock = base_version if clock is None else clock
        view = self.view()
        decision = self.policy.on_push(worker_id, base_version, clock, view)
        key = self.policy.buffer_clock(base_version, clock)
        # The job's last clock is target_version - 1. A worker still short of the target on
        # another shard pushes on to this one too: counted, never applied, served at once.
        last_clock = self.spec.target_version - 1
        past_end = decision is PushDecision.BUFFER and key > last_clock
        if past_end or (decision is PushDecision.BUFFER and self._missed_start(worker_id, key)):
            decision = PushDecision.DROP_LATE
        if now is not None:
            self.policy.on_arrival(worker_id, now)
        staleness = view.version - base_version
        if worker_id in self._not_started:
            # A joiner's first push here: barriers wait for it from the clock it pushed for
            # (buffered), else from the current one, which it is served next.
            self._not_started.discard(worker_id)
            # (its next version when the current one is half applied: it is served that next)
            self._joined[worker_id] = key if decision is PushDecision.BUFFER else self.version + self.partial
        folded: tuple[int, ...] = ()
        if decision is PushDecision.APPLY:
            self._apply_alone(worker_id, grad, staleness)
            folded, outcome = (staleness,), PushOutcome.APPLIED
        elif decision is PushDecision.BUFFER:
            self._add_to_buffer(key, worker_id, push_id, base_version, grad, clock >= last_clock)
            folded = self._apply_complete_buffers()
            outcome = PushOutcome.APPLIED if folded else PushOutcome.BUFFERED
        elif decision is PushDecision.DROP_LATE:
            self.counters.reject("late")
            outcome = PushOutcome.DROPPED_LATE
        else:
            self.counters.reject("stale")
            outcome = PushOutcome.REJECTED_STALE
        serve = self.version if past_end else self.policy.serve_after_push(base_version, clock, self.view())
        return self._record(worker_id, push_id, PushResult(outcome, self.version, staleness, serve, folded))

    def _record(self, worker_id: str, push_id: str, result: PushResult) -> PushResult:
        """Counts a push as its member's, and remembers it if its gradient was taken. Only a
        taken gradient is remembered: a push that was refused or dropped is judged again if it
        comes back (versions only grow, so a late one stays late), and an id used by a forged
        late push stays free for the real one."""
        if result.outcome in _TAKEN:
            self._pushes.remember(worker_id, push_id, result)
        self.counters.by_worker[worker_id] = self.counters.by_worker.get(worker_id, 0) + 1
        return result

    def _check_entry(self, worker_id: str, membership_epoch: int, push_id: str, base_version: int) -> None:
        """What every push must pass before anything else: a member's, in its epoch, to an
        initialized shard, with a valid id and base version."""
        self.check_sender(worker_id, membership_epoch)
        if not self.initialized:
            raise FailedPreconditionError("push: this shard has no parameters yet (a worker sends them with 'init')")
        if not push_id:
            raise InvalidArgumentError("push.push_id: must not be empty")
        if len(push_id) > MAX_PUSH_ID_CHARS:
            raise InvalidArgumentError(f"push.push_id: {len(push_id)} characters, at most {MAX_PUSH_ID_CHARS}")
        if base_version < 0:
            raise InvalidArgumentError(f"push.base_version: must be >= 0, got {base_version}")

    def _check_gradient(self, grad: torch.Tensor) -> None:
        if grad.shape != self.params.shape or grad.dtype != self.params.dtype:
            raise InvalidArgumentError(
                f"push.chunks: gradient has {grad.numel()} {grad.dtype} elements, "
                f"shard holds {self.numel} {self.params.dtype}"
            )
        if not all_finite(grad):
            self.counters.reject("non_finite")
            raise NonFiniteGradientError("push.chunks: gradient contains NaN or Inf")

    def _repeat(self, previous: PushResult) -> PushResult:
        """A push whose gradient this member already had taken, sent again (a retry after a
        reconnect): answered DUPLICATE, nothing is applied twice."""
        self.counters.reject("duplicate")
        return PushResult(PushOutcome.DUPLICATE, self.version, previous.staleness, previous.serve_version)

    def set_membership(self, membership_epoch: int, workers: Iterable[str]) -> tuple[int, ...]:
        """Re-forms the barrier over the new members; gradients already buffered are kept (a
        lost worker's included). A joiner counts from its first push on. Returns the staleness
        of the gradients folded in if that completed buffers."""
        if membership_epoch < self.membership_epoch:
            raise FailedPreconditionError(
                f"membership_epoch: {membership_epoch} is older than the current {self.membership_epoch}"
            )
        self.membership_epoch = membership_epoch
        members = frozenset(workers)
        for joiner in members - self.members:
            # No barrier waits for it until its first push here (see `_not_started`).
            self._admitted[joiner] = membership_epoch
            self._not_started.add(joiner)
        for gone in self.members - members:
            self._admitted.pop(gone, None)
            self._joined.pop(gone, None)
            self._not_started.discard(gone)
        self.members = members
        for gone in set(self._served) - self.members:
            del self._served[gone]
        self.policy.on_membership(self.members)
        return self._apply_complete_buffers()

    def _apply_alone(self, worker_id: str, grad: torch.Tensor, staleness: int) -> None:
        """Async: one gradient, with the job's staleness compensation."""
        options = self.spec.consistency
        if self.compensates and staleness > 0 and (backup := self._served.get(worker_id)) is not None:
            # DC-ASGD: a first-order correction for the updates applied since the worker's read.
            grad = grad + options.dc_lambda * grad * (grad * (self.params.detach() - backup))
            if not bool(torch.isfinite(grad).all()):
                self.counters.reject("non_finite")
                raise NonFiniteGradientError("push.chunks: the delay-compensated gradient overflows")
        scale = 1.0 / staleness if options.staleness_lr == "inverse" and staleness > 1 else 1.0
        self._step(grad, scale)
        self.counters.updates_applied += 1
        self.counters.staleness.record(staleness)

    def _step(self, grad: torch.Tensor, lr_scale: float = 1.0) -> None:
        if self.before_change is not None:
            self.before_change()
        with self._scheduled_lr(lr_scale):
            self.params.grad = grad
            eager_optim.step(self.optimizer)
            self.params.grad = None
        self._next_version()

    @contextmanager
    def _scheduled_lr(self, scale: float = 1.0) -> Iterator[None]:
        """The optimizer's learning rate for a step of the current version: the base rate times
        the schedule's factor (and `scale`), restored after."""
        group = self.optimizer.param_groups[0]
        group["lr"] = self._base_lr * scale * lr_factor(self._schedule, self.version, self.spec.target_version)
        try:
            yield
        finally:
            group["lr"] = self._base_lr

    def _next_version(self) -> None:
        self.version += 1
        # A buffer for a clock the shard has passed can never complete: its gradients were late.
        for stale in [c for c in self._buffers if c < self.version]:
            self.counters.reject("late")
            del self._buffers[stale]

    def recent_pushes(self, per_member: int = PUSH_IDS_PER_MEMBER) -> list[tuple[str, str, PushResult]]:
        """The latest `per_member` remembered pushes of each member as (member, push id,
        result), each member's oldest first: a checkpoint keeps a few."""
        return self._pushes.recent(per_member)

    def remember_pushes(self, pushes: Iterable[tuple[str, str, PushResult]]) -> None:
        """Restores remembered pushes, so a push retried after a restore is not applied twice."""
        self._pushes.restore(pushes)
