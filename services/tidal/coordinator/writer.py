"""Writes the coordinator's changes to its state store from one dedicated thread.

SQLite never runs on the event loop: the loop takes what changed as plain data (`collect`)
and a single writer thread commits it, so writes stay in order. Requests made while a write
is in flight coalesce into one next write. `flushed()` returns once everything requested so
far is on disk: the control loop awaits it before the commands a change produced go out.
A write that fails is logged and its changes are retried with the next one.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tidal.coordinator.store import Changes, StateStore

log = logging.getLogger(__name__)


class StateWriter:
    def __init__(
        self, store: StateStore, collect: Callable[[], Changes], observe: Callable[[float], None] = lambda s: None
    ) -> None:
        """`collect` runs on the loop and returns what changed since it last ran; `observe`
        gets each write's duration in seconds."""
        self._store = store
        self._collect = collect
        self._observe = observe
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-writer")
        # Done once the write in flight is on disk; and once the next (requested) one is.
        self._writing: asyncio.Future[None] | None = None
        self._next: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        # The changes of the write in flight, and of one that failed (retried with the next).
        self._in_flight: Changes | None = None
        self._carry: Changes | None = None
        self._closed = False

    @property
    def retry_due(self) -> bool:
        """A write failed and no other is requested yet."""
        return self._carry is not None and self._next is None

    def request(self) -> None:
        """Asks for a write of everything changed so far; see `flushed`."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        if self._next is None:
            self._next = loop.create_future()
        if self._task is None:
            self._task = loop.create_task(self._drain(), name="state-writer")

    async def flushed(self) -> None:
        """Returns once every write requested so far is on disk; raises if it failed."""
        target = self._next or self._writing
        if target is not None:
            # Shielded: a caller that is cancelled must not cancel the write others wait on.
            await asyncio.shield(target)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._next is not None:
                done = self._writing = self._next
                self._next = None
                changes = None
                try:
                    changes = self._in_flight = self._take()
                    seconds = await loop.run_in_executor(self._thread, self._write, changes)
                except (sqlite3.Error, OSError) as exc:  # a locked or full disk, say: the next change retries
                    log.exception("cannot save the coordinator's state (retried with the next change): %s", exc)
                    if changes is not None:
                        self._carry = changes
                    done.set_exception(exc)
                    done.exception()  # retrieved here: waiters, if any, raise it too
                else:
                    self._observe(seconds)
                    done.set_result(None)
                self._writing = self._in_flight = None
        finally:
            self._task = None
            for future in (self._writing, self._next):
                if future is not None and not future.done():
                    future.cancel()  # the loop is going away (the process ends)

    def _take(self) -> Changes:
        changes = self._collect()
        if self._carry is not None:
            changes, self._carry = self._carry.then(changes), None
        return changes

    def _write(self, changes: Changes) -> float:
        started = time.perf_counter()
        self._store.write(changes)
        return time.perf_counter() - started

    def close(self) -> None:
        """Writes what is left and closes the store, in the writer thread, after any write in
        flight. Blocks the caller: for shutdown only."""
        self._closed = True
        # The write in flight, if any, is repeated: it may yet fail, and its failure would
        # only be seen by the loop this call blocks.
        changes = self._take() if self._in_flight is None else self._in_flight.then(self._take())
        try:
            self._thread.submit(self._write, changes).result()
        finally:
            self._thread.submit(self._store.close).result()
            self._thread.shutdown()
        if self._next is not None:
            self._next.set_result(None)  # the write just made covers it
            self._next = None
