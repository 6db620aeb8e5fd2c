"""When and what the coordinator saves to its state store (coordinator/store.py).

Adopts the saved members and jobs at start-up; hands the writer thread (coordinator/writer.py)
only what changed since its last write, skipping jobs already saved as ended; and remembers
progress reported since the last save, which the control loop's tick saves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tidal.coordinator.store import Changes, StateStore
from tidal.coordinator.writer import StateWriter
from tidal.core.jobs import JobManager
from tidal.core.membership import Membership

log = logging.getLogger(__name__)


class Saving:
    def __init__(
        self,
        store: StateStore | None,
        membership: Membership,
        jobs: JobManager,
        observe: Callable[[float], None],
    ) -> None:
        """`observe` gets each write's duration in seconds. Without a store nothing is saved."""
        self._membership = membership
        self._jobs = jobs
        self._writer = StateWriter(store, self._changes, observe) if store else None
        # Progress reported since the last save, saved with the next tick.
        self.unsaved = False
        # Ended jobs already handed to the writer: they never change again, so saves skip them.
        self._saved_ended: set[str] = set()

    def adopt(self, store: StateStore, resume_grace_s: float, heartbeat_timeout_s: float) -> None:
        """Restores the saved members and jobs; saved live members have `resume_grace_s` on top
        of the heartbeat timeout to come back."""
        saved = store.load(time.monotonic() + resume_grace_s)
        self._membership.restore(saved.members, saved.membership_epoch, saved.next_member_id)
        self._jobs.restore(saved.jobs)
        self._saved_ended = {j.job_id for j in saved.jobs if j.state.terminal}
        live = [m for m in saved.members if m.live]
        running = [j.job_id for j in saved.jobs if not j.state.terminal]
        log.info(
            "adopted state from %s: %d live members (waiting %.0fs for them to resume), jobs in progress: %s",
            store.path, len(live), resume_grace_s + heartbeat_timeout_s, ", ".join(running) or "none",
        )  # fmt: skip

    def due(self) -> bool:
        """Whether the tick must save: a job ended unsaved (it may have had no member to tell,
        so no command saved it), progress is unsaved, or a failed write waits for a retry."""
        ended = any(j.state.terminal and j.job_id not in self._saved_ended for j in self._jobs.all())
        return ended or self.unsaved or (self._writer is not None and self._writer.retry_due)

    def save(self) -> None:
        """Asks the writer thread to save every change so far, if there is a store; await
        `flush` where the change must be on disk before anything goes out."""
        self.unsaved = False
        if self._writer is not None:
            self._writer.request()

    async def flush(self) -> None:
        """Returns once every save asked for so far is on disk."""
        if self._writer is not None:
            await self._writer.flushed()

    def _changes(self) -> Changes:
        """What changed since the last write, taken on the loop for the writer thread: members
        changed or forgotten, and every job not yet saved as ended (the store skips the ones
        whose data did not change)."""
        members, forgotten = self._membership.take_changes()
        jobs = [j for j in self._jobs.all() if j.job_id not in self._saved_ended]
        self._saved_ended.update(j.job_id for j in jobs if j.state.terminal)
        return Changes.of(members, jobs, self._membership.epoch, self._membership.next_id, forgotten)

    def close(self) -> None:
        """Saves what is left and closes the store (blocks: for shutdown)."""
        if self._writer is not None:
            self.unsaved = False
            self._writer.close()
