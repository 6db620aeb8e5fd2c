"""Prepares the next training batch in a background thread while the current step computes
and talks to the shards. Batches are a pure function of the step, so fetching ahead changes
nothing about which samples a step sees."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["Prefetcher"]

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """``get(step)`` returns a future of ``fetch(step)`` and starts ``fetch(step + 1)`` behind it.

    One background thread: fetches run one after the other, in step order, so ``fetch`` need
    not be thread-safe. Asking for another step than the one fetched ahead (after a restart)
    fetches it afresh; the stale one is dropped. `restart` swaps the fetch function (a new
    partition) on the same thread, so an old fetch still under way never overlaps a new one.
    """

    def __init__(self, fetch: Callable[[int], T]) -> None:
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidal-prefetch")
        self._ahead: tuple[int, Future[T]] | None = None

    def get(self, step: int) -> Future[T]:
        if self._ahead is not None and self._ahead[0] == step:
            current = self._ahead[1]
        else:
            current = self._pool.submit(self._fetch, step)
        self._ahead = (step + 1, self._pool.submit(self._fetch, step + 1))
        return current

    def restart(self, fetch: Callable[[int], T]) -> None:
        """Fetches with ``fetch`` from now on; what was fetched ahead with the old one is dropped.
        A future already handed out still completes (a step may be waiting on it)."""
        self._fetch, self._ahead = fetch, None

    def close(self) -> None:
        """No more fetches; the thread ends after the ones already queued (at most two)."""
        self._ahead = None
        self._pool.shutdown(wait=False)
