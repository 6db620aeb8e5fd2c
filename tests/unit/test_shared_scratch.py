"""The shard's one scratch buffer for pushes (shard/scratch.SharedScratch): streams take turns,
and a holder that stalls does not hold up the others."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tidal.shard.scratch import SharedScratch


def test_streams_take_turns_with_one_buffer() -> None:
    async def body() -> None:
        scratch = SharedScratch(torch.zeros(8), wait_s=10.0)
        first = await scratch.take()
        second = asyncio.create_task(scratch.take())
        await asyncio.sleep(0.05)
        assert not second.done(), "the second push must wait while the first holds the buffer"
        scratch.give_back(first)
        assert await asyncio.wait_for(second, 1.0) is first
        scratch.give_back(first)
        assert await scratch.take() is first  # the same buffer every time: one per shard

    asyncio.run(body())


def test_a_stalled_holder_does_not_hold_up_the_others() -> None:
    async def body() -> None:
        scratch = SharedScratch(torch.zeros(8), wait_s=0.1)
        shared = await scratch.take()  # held and never given back: a stalled sender
        own = await asyncio.wait_for(scratch.take(), 1.0)
        assert own is not shared and own.shape == shared.shape and not own.requires_grad
        scratch.give_back(own)  # a private buffer does not free the shared one
        # The holder stalled past the wait already: the next push does not wait at all
        # (its take() finishes without suspending once).
        take = scratch.take()
        with pytest.raises(StopIteration) as finished:
            take.send(None)
        assert finished.value.value is not shared
        scratch.give_back(shared)
        assert await scratch.take() is shared

    asyncio.run(body())


def test_giving_back_nothing_is_harmless() -> None:
    async def body() -> None:
        scratch = SharedScratch(torch.zeros(4))
        scratch.give_back(None)
        buffer = await scratch.take()
        scratch.give_back(buffer)
        assert await scratch.take() is buffer

    asyncio.run(body())


def test_without_a_wait_a_busy_buffer_means_a_fresh_one_at_once() -> None:
    """Barrier modes (wait_s 0): simultaneous pushes are received side by side."""

    async def body() -> None:
        scratch = SharedScratch(torch.zeros(8), wait_s=0.0)
        shared = await scratch.take()
        own = await asyncio.wait_for(scratch.take(), 0.05)
        assert own is not shared
        scratch.give_back(own)
        scratch.give_back(shared)
        assert await scratch.take() is shared

    asyncio.run(body())
