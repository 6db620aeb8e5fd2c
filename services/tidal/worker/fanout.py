"""Fan-out that fails together: the worker's calls to all its shards at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def fan_out(*coros: Coroutine[Any, Any, T]) -> list[T]:
    """Runs `coros` concurrently and returns their results in order. The first one to fail
    cancels the others (a job that lost one shard must not keep pushing to the rest) and is
    raised as itself, so callers and messages see the shard's own error, not a group."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coro) for coro in coros]
    except BaseExceptionGroup as failed:
        raise first_error(failed) from None
    return [task.result() for task in tasks]


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The group's first error (a TaskGroup lists them in the order they happened); any others
    are logged, since only one can be raised."""
    found = [exc for exc in group.exceptions if not isinstance(exc, asyncio.CancelledError)]
    if not found:
        return group
    for other in found[1:]:
        log.warning("also failed meanwhile: %s: %s", type(other).__name__, other)
    return found[0]
