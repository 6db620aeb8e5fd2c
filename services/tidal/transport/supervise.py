"""The tasks a service process lives on, and the threads it must never wait for.

A service runs long-lived tasks next to its servers (the coordinator's control loop, its
REST and metrics servers, the one-job task). Left alone, a task that crashes is noticed by
nobody: the process serves on, half dead. `Supervisor` logs the crash with its traceback
and sets the process's stop event, so the process shuts down and exits non-zero; an
orchestrator restarts it, and a coordinator with a state folder adopts its members again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Supervisor:
    """Watches tasks that must run as long as the process. The first one to crash, or to end
    before the stop event is set, sets it; `failed` then says the process must exit non-zero.

    Lifecycle: `spawn`/`watch` while running; `close` once the stop event is set cancels the
    tasks still running and waits for them (a crash while they stop still counts)."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._tasks: list[asyncio.Task[Any]] = []
        # Names of the tasks that crashed or ended too early, in order.
        self.failures: list[str] = []

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any], may_end: bool = False) -> asyncio.Task[Any]:
        return self.watch(name, asyncio.create_task(coro, name=name), may_end)

    def watch(self, name: str, task: asyncio.Task[Any], may_end: bool = False) -> asyncio.Task[Any]:
        """Supervises `task`; with `may_end` it may finish without an error (a bounded job)."""
        self._tasks.append(task)
        task.add_done_callback(functools.partial(self._ended, name, may_end))
        return task

    def _ended(self, name: str, may_end: bool, task: asyncio.Task[Any]) -> None:
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


async def in_daemon_thread(fn: Callable[[], T], name: str) -> T:
    """Runs blocking `fn` in a daemon thread and awaits its result. Unlike asyncio.to_thread,
    whose threads asyncio.run and the interpreter join at exit, a thread still busy (a model
    being built from a submitted spec) never keeps the process from stopping. Cancelling the
    await leaves `fn` to finish unobserved."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        def apply() -> None:
            if not future.done():
                outcome()

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(apply)

    def target() -> None:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001  # handed to the awaiting coroutine, which raises it
            settle(functools.partial(future.set_exception, exc))
        except BaseException as exc:  # noqa: BLE001  # SystemExit in user code must not end the event loop
            settle(functools.partial(future.set_exception, RuntimeError(f"{name}: {type(exc).__name__}: {exc}")))
        else:
            settle(functools.partial(future.set_result, result))

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future
