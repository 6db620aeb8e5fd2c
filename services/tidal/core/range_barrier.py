"""A sync barrier that completes range by range: the sum of one clock's gradients as they arrive.

Each worker sends its slice in slice order, so what arrived of a worker's gradient is a prefix
of the slice. A range is complete once every worker the clock waits for sent past its end: it
can be applied, and its parameters sent down, while the rest of the slice is still coming up.
Over one link a step then takes about one direction's transfer time, not (1 + 1/shards) of it.

Only the arithmetic lives here; the shard's state (core/shard_state.py) decides who is waited
for and applies the ranges.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.range_step import ALIGN

# A range is applied once at least this many elements of it are complete (4 MiB of float32):
# fewer, larger optimizer steps, and still a small tail after the last gradient arrived.
MIN_RANGE_ELEMENTS = 1 << 20


@dataclass
class RangeBuffer:
    """The gradients of one clock, summed as they arrive, and how far each worker's got."""

    total: torch.Tensor
    # worker -> base version of its gradient (the clock's contributors, complete or not)
    bases: dict[str, int] = field(default_factory=dict)
    # Contributors whose gradient is of the job's last clock.
    finals: set[str] = field(default_factory=set)
    # worker -> the push id its gradient came under (a resent push resumes; another is refused)
    push_ids: dict[str, str] = field(default_factory=dict)
    # worker -> elements of its gradient received: [0, prefix) of the slice
    prefix: dict[str, int] = field(default_factory=dict)
    # Elements [0, applied) are in the parameters.
    applied: int = 0
    # Elements [0, filled) of `total` hold a sum; beyond, nothing yet.
    filled: int = 0

    @property
    def numel(self) -> int:
        return self.total.numel()

    def join(self, worker_id: str, push_id: str, base_version: int, final: bool) -> None:
        self.push_ids[worker_id] = push_id
        self.prefix.setdefault(worker_id, 0)
        self.bases[worker_id] = base_version
        if final:
            self.finals.add(worker_id)

    def add(self, worker_id: str, start: int, values: torch.Tensor, where: str) -> None:
        """Adds elements [start, start + len(values)) of `worker_id`'s gradient. What it sent
        before (a push resent after a reconnect) is skipped; a gap is refused, naming `where`."""
        have = self.prefix[worker_id]
        end = start + values.numel()
        if start > have:
            raise InvalidArgumentError(
                f"{where}: starts at element {start} of the slice, but this push's chunks so far end at {have} "
                "(chunks travel in slice order)"
            )
        if end <= have:
            return
        if start < have:
            values, start = values[have - start :], have
        if values.dtype != self.total.dtype:
            values = values.to(self.total.dtype)  # bf16 on the wire: widening first halves the add's time
        # Below `filled` another worker's gradient is there to add to; above, this one starts the sum.
        split = min(max(self.filled, start), end)
        if split > start:
            self.total[start:split].add_(values[: split - start])
        if end > split:
            self.total[split:end].copy_(values[split - start :])
        self.filled = max(self.filled, end)
        self.prefix[worker_id] = end

    def coming(self) -> str:
        """The gradients that arrived in part, in words: "w1 (1048576 of 3000000 elements)"."""
        return ", ".join(
            f"{w} ({have} of {self.numel} elements)" for w, have in sorted(self.prefix.items()) if have < self.numel
        )

    def complete_to(self, expected: Iterable[str]) -> int:
        """How far every expected worker's gradient has arrived, on an `ALIGN` boundary (or the
        end); `applied` when there is nobody to wait for (a barrier needs one gradient)."""
        waited = [self.prefix.get(w, 0) for w in expected]
        if not waited:
            return self.applied
        ready = min(waited)
        return ready if ready == self.numel else ready - ready % ALIGN

    def due(self, ready: int) -> bool:
        """Whether the range up to `ready` is worth a step now: the end, or a large enough range."""
        return ready > self.applied and (ready == self.numel or ready - self.applied >= MIN_RANGE_ELEMENTS)

    def pieces(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """[lo, hi) cut where the number of contributors changes: (start, end, contributors).
        Every expected worker covers it; a worker that left mid-push covers only its prefix."""
        cuts = sorted({lo, hi} | {p for p in self.prefix.values() if lo < p < hi})
        return [(a, b, sum(1 for p in self.prefix.values() if p >= b)) for a, b in itertools.pairwise(cuts)]
