"""The domain of one parameter shard for one job, without sockets or asyncio.

Holds the shard's flat parameter slice and its torch.optim optimizer, checks who may push,
deduplicates pushes by id, asks the consistency policy what to do with each gradient and
carries the decision out. A rejected push never touches the parameters: every check runs
before the first write.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import torch

from tidal.core.errors import FailedPreconditionError, InvalidArgumentError, NonFiniteGradientError
from tidal.core.optim import build_optimizer
from tidal.core.policy import ConsistencyPolicy, PushDecision, ShardView, policy_for
from tidal.core.shard_map import Segment, ShardMap
from tidal.core.spec import JobSpec
from tidal.core.staleness import StalenessStats

# Push ids remembered for deduplication; a retry arrives within seconds, not after this many pushes.
PUSH_ID_MEMORY = 100_000


class PushOutcome(Enum):
    APPLIED = "applied"
    BUFFERED = "buffered"
    DUPLICATE = "duplicate"
    DROPPED_LATE = "dropped_late"
    REJECTED_STALE = "rejected_stale"


@dataclass(frozen=True)
class PushResult:
    outcome: PushOutcome
    # Shard version right after the push was handled.
    version: int
    # Versions between the gradient's base and the version it was applied to.
    staleness: int
    # Lowest version the worker may train on next.
    serve_version: int
    # Staleness of every gradient this push folded into the parameters (several when it
    # completed a barrier, none when it was buffered or refused).
    folded: tuple[int, ...] = ()


@dataclass
class ShardCounters:
    updates_applied: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    staleness: StalenessStats = field(default_factory=StalenessStats)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def updates_rejected(self) -> int:
        return sum(self.rejected.values())


class ShardState:
    def __init__(
        self,
        spec: JobSpec,
        shard_index: int,
        shard_map: ShardMap,
        initial: torch.Tensor,
        membership_epoch: int,
        workers: Iterable[str],
        policy: ConsistencyPolicy | None = None,
    ) -> None:
        start, end = shard_map.ranges[shard_index]
        if initial.numel() != end - start or initial.dim() != 1:
            raise InvalidArgumentError(f"initial: expected a flat tensor of {end - start} elements")
        self.spec = spec
        self.shard_index = shard_index
        self.shard_map = shard_map
        self.segments: list[Segment] = shard_map.segments(shard_index)
        self.params = initial.detach().clone().requires_grad_(True)
        self.optimizer = build_optimizer(spec.optimizer, [self.params])
        self.policy = policy or policy_for(spec)
        self.version = 0
        self.membership_epoch = membership_epoch
        self.members: frozenset[str] = frozenset(workers)
        self.counters = ShardCounters()
        self._accumulated = torch.zeros_like(self.params, requires_grad=False)
        self._arrived: dict[str, int] = {}  # worker -> base version of its buffered gradient
        self._push_ids: OrderedDict[str, PushResult] = OrderedDict()

    @property
    def numel(self) -> int:
        return self.params.numel()

    def view(self) -> ShardView:
        return ShardView(self.version, self.members, frozenset(self._arrived))

    def check_sender(self, worker_id: str, membership_epoch: int) -> None:
        if worker_id not in self.members:
            raise FailedPreconditionError(f"worker_id: {worker_id!r} is not a member of job {self.spec.name!r}")
        if membership_epoch != self.membership_epoch:
            raise FailedPreconditionError(
                f"membership_epoch: {membership_epoch} is not the current epoch {self.membership_epoch}"
            )

    def push(
        self, worker_id: str, push_id: str, base_version: int, membership_epoch: int, grad: torch.Tensor
    ) -> PushResult:
        """Handles one complete gradient push. Raises before any write if it is invalid."""
        self.check_sender(worker_id, membership_epoch)
        if not push_id:
            raise InvalidArgumentError("push.push_id: must not be empty")
        if (previous := self._push_ids.get(push_id)) is not None:
            self.counters.reject("duplicate")
            return PushResult(PushOutcome.DUPLICATE, self.version, previous.staleness, previous.serve_version)
        if base_version < 0:
            raise InvalidArgumentError(f"push.base_version: must be >= 0, got {base_version}")
        if grad.shape != self.params.shape or grad.dtype != self.params.dtype:
            raise InvalidArgumentError(
                f"push.chunks: gradient has {grad.numel()} {grad.dtype} elements, "
                f"shard holds {self.numel} {self.params.dtype}"
            )
        if not bool(torch.isfinite(grad).all()):
            self.counters.reject("non_finite")
            raise NonFiniteGradientError("push.chunks: gradient contains NaN or Inf")
        view = self.view()
        decision = self.policy.on_push(worker_id, base_version, view)
        staleness = view.version - base_version
        folded: tuple[int, ...] = ()
        if decision is PushDecision.APPLY:
            self._step(grad)
            self.counters.updates_applied += 1
            self.counters.staleness.record(staleness)
            folded, outcome = (staleness,), PushOutcome.APPLIED
        elif decision is PushDecision.BUFFER:
            self._accumulated.add_(grad)
            self._arrived[worker_id] = base_version
            folded = self._complete_barrier_if_ready()
            outcome = PushOutcome.APPLIED if folded else PushOutcome.BUFFERED
        elif decision is PushDecision.DROP_LATE:
            self.counters.reject("late")
            outcome = PushOutcome.DROPPED_LATE
        else:
            self.counters.reject("stale")
            outcome = PushOutcome.REJECTED_STALE
        serve = self.policy.serve_after_push(base_version, self.view())
        result = PushResult(outcome, self.version, staleness, serve, folded)
        self._remember(push_id, result)
        return result

    def set_membership(self, membership_epoch: int, workers: Iterable[str]) -> tuple[int, ...]:
        """Re-forms the barrier over the new members; gradients already buffered are kept.
        Returns the staleness of the gradients folded in if that completed the current step."""
        if membership_epoch < self.membership_epoch:
            raise FailedPreconditionError(
                f"membership_epoch: {membership_epoch} is older than the current {self.membership_epoch}"
            )
        self.membership_epoch = membership_epoch
        self.members = frozenset(workers)
        return self._complete_barrier_if_ready()

    def _complete_barrier_if_ready(self) -> tuple[int, ...]:
        if not self._arrived or not self.policy.barrier_complete(self.view()):
            return ()
        count = len(self._arrived)
        folded = tuple(self.version - base for base in self._arrived.values())
        self._step(self._accumulated.div_(count))
        self.counters.updates_applied += count
        for staleness in folded:
            self.counters.staleness.record(staleness)
        self._accumulated.zero_()
        self._arrived.clear()
        return folded

    def _step(self, grad: torch.Tensor) -> None:
        self.params.grad = grad
        self.optimizer.step()
        self.params.grad = None
        self.version += 1

    def _remember(self, push_id: str, result: PushResult) -> None:
        self._push_ids[push_id] = result
        if len(self._push_ids) > PUSH_ID_MEMORY:
            self._push_ids.popitem(last=False)
