"""Where a shard assembles pushes before they reach its parameters."""

from __future__ import annotations

import asyncio
import contextlib

import torch

# In async mode a push waits at most this long, in seconds, for the scratch buffer another
# stream holds before it assembles into a buffer of its own (a stalled sender must not hold
# up the others).
SCRATCH_WAIT_S = 5.0


class SharedScratch:
    """One gradient-sized buffer that a shard's streams take turns assembling pushes into.

    Pushes are assembled outside the parameters so that a bad one changes nothing (every
    check runs before the optimizer step). In async mode they are applied one at a time, in
    arrival order, so W streams need one buffer, not W: a stream holds it from a push's first
    chunk until the push was handled, and the next stream waits for it (`wait_s` > 0). A
    holder that keeps it longer than `wait_s` (a stalled sender) does not hold up the others:
    they assemble into buffers of their own, freed after their push. In the barrier modes a
    step needs every worker's push, so receiving them one after another would lengthen every
    step: there (`wait_s` = 0) a push that finds the buffer taken assembles into its own at
    once. Every push overwrites the whole buffer (the assembler refuses one that does not
    cover the slice), so nothing leaks from one push into the next.
    """

    def __init__(self, like: torch.Tensor, wait_s: float = SCRATCH_WAIT_S) -> None:
        self._like = like
        self._wait_s = wait_s
        self._buffer: torch.Tensor | None = None
        # loop.time() when the current holder took it; None while it is free.
        self._held_since: float | None = None
        self._released = asyncio.Event()

    @property
    def in_use(self) -> bool:
        """True while a stream holds the shared buffer."""
        return self._held_since is not None

    async def take(self) -> torch.Tensor:
        """The shared buffer, or a fresh one if it stays taken (see the class docstring);
        hand it back with `give_back` once the push was handled, also on error."""
        loop = asyncio.get_running_loop()
        while self._held_since is not None:
            left = self._held_since + self._wait_s - loop.time()
            if left <= 0:
                return torch.empty_like(self._like, requires_grad=False)
            self._released.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), left)
        self._held_since = loop.time()
        if self._buffer is None:
            self._buffer = torch.empty_like(self._like, requires_grad=False)
        return self._buffer

    def give_back(self, buffer: torch.Tensor | None) -> None:
        """Frees the shared buffer if `buffer` is it (a fresh one, or None, is just dropped)."""
        if buffer is not None and buffer is self._buffer:
            self._held_since = None
            self._released.set()
