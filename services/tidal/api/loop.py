"""A private asyncio loop on a background thread, for blocking callers.

The synchronous client runs the async gRPC client there, so it works the same in a script
and in a notebook, whose own thread already runs an event loop (asyncio.run would refuse).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self, name: str = "tidal-client") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedules `coro` on the loop; cancelling the future cancels the coroutine."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` to its end and returns its result, blocking the caller. A Ctrl-C in the
        caller cancels the coroutine and propagates."""
        future = self.submit(coro)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        """Cancels what still runs, stops the loop and joins its thread (idempotent)."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            self.submit(self._cancel_pending()).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    async def _cancel_pending(self) -> None:
        tasks = [t for t in asyncio.all_tasks(self._loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # collect them; nothing fails together here
