"""The tasks a service process lives on.

A service runs long-lived tasks next to its servers (the coordinator's control loop, its
REST and metrics servers, the one-job task). Left alone, a task that crashes is noticed by
nobody: the process serves on, half dead. `Supervisor` logs the crash with its traceback
and sets the process's stop event, so the process shuts down and exits non-zero; an
orchestrator restarts it, and a coordinator with a state folder adopts its members again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    """Watches tasks that must run as long as the process. The first one to crash, or to end
    before the stop event is set, sets it; `failed` then says the process must exit non-zero.

    Lifecycle: `spawn`/`watch` while running; `close` once the stop event is set cancels the
    tasks still running and waits for them (a crash while they stop still counts). A task that
    ended is forgotten: a process that spawns a task per job keeps none of the old ones."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._tasks: set[asyncio.Task[Any]] = set()
        # Names of the tasks that crashed or ended too early, in order.
        self.failures: list[str] = []

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any], may_end: bool = False) -> asyncio.Task[Any]:
        return self.watch(name, asyncio.create_task(coro, name=name), may_end)

    def watch(self, name: str, task: asyncio.Task[Any], may_end: bool = False) -> asyncio.Task[Any]:
        """Supervises `task`; with `may_end` it may finish without an error (a bounded job)."""
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._ended, name, may_end))
        return task

    @property
    def running(self) -> frozenset[asyncio.Task[Any]]:
        """The supervised tasks that have not ended yet."""
        return frozenset(self._tasks)

    def _ended(self, name: str, may_end: bool, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s crashed; the process stops", name, exc_info=exc)
        elif may_end or self._stop.is_set():
            return  # servers end once told to stop
        else:
            log.error("%s ended while the process still needs it; the process stops", name)
        self.failures.append(name)
        self._stop.set()

    async def close(self) -> None:
        """Cancels the tasks still running and returns once all of them ended."""
        await cancel_and_wait(*self._tasks)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancels `tasks` and returns once every one ended, so nothing of theirs runs on. Their
    errors stay with them (for a supervisor or whoever reads them); unlike awaiting each
    under suppress(CancelledError), a cancellation of the caller itself still propagates."""
    live = {task for task in tasks if task is not None}
    for task in live:
        task.cancel()
    if live:
        await asyncio.wait(live)
