"""Bugs fail fast; the fan-out cancels.

The worker's fan-out to its shards (worker/fanout.py) fails together: the first failure cancels
the siblings and surfaces as itself. A shard that answers with a bug (INTERNAL, UNKNOWN,
UNIMPLEMENTED) is not reconnected to: the link raises InternalError with the shard's message at
once, where a shard that went away (UNAVAILABLE) is still recovered from. No wall-clock
assertions: tests wait on events; the link tests talk to a tiny grpc.aio server on port 0.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import torch

from tidal.core.errors import InternalError, UnavailableError
from tidal.core.shard_map import build_shard_map
from tidal.core.torch_dtypes import tensor_infos
from tidal.transport import frames, shm
from tidal.transport.errors import translate_errors
from tidal.transport.tls import SecurityConfig
from tidal.v1 import shard_pb2 as shard_pb
from tidal.worker.fanout import fan_out
from tidal.worker.links import ShardLink
from tidal.worker.loop import TrainingRun

# --- the fan-out helper ------------------------------------------------------------------


def test_results_come_back_in_order() -> None:
    async def scenario() -> list[int]:
        second_done = asyncio.Event()

        async def first() -> int:
            await second_done.wait()  # finishes last, still comes first
            return 1

        async def second() -> int:
            second_done.set()
            return 2

        return await fan_out(first(), second(), asyncio.sleep(0, 3))

    assert asyncio.run(scenario()) == [1, 2, 3]


def test_one_failure_cancels_a_slow_sibling_and_surfaces_as_itself() -> None:
    seen: dict[str, bool] = {"cancelled": False, "finished": False}

    async def scenario() -> None:
        started = asyncio.Event()

        async def slow_push() -> None:
            started.set()
            try:
                await asyncio.Event().wait()  # never set: only a cancellation ends it
                seen["finished"] = True
            except asyncio.CancelledError:
                seen["cancelled"] = True
                raise

        async def failing_push() -> None:
            await started.wait()
            raise InternalError("shard 1 (127.0.0.1:1): Unexpected <class 'RuntimeError'>: boom")

        await fan_out(slow_push(), failing_push())

    with pytest.raises(InternalError) as caught:
        asyncio.run(scenario())
    assert type(caught.value) is InternalError  # the error itself, not an ExceptionGroup
    assert str(caught.value) == "shard 1 (127.0.0.1:1): Unexpected <class 'RuntimeError'>: boom"
    assert seen == {"cancelled": True, "finished": False}


def test_the_first_of_several_failures_is_raised_and_the_others_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        started = asyncio.Event()

        async def fails_while_cancelled() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise UnavailableError("shard 0: stream closed by the shard") from None

        async def fails_first() -> None:
            await started.wait()
            raise ValueError("shard 1: boom")

        await fan_out(fails_while_cancelled(), fails_first())

    with caplog.at_level(logging.WARNING, logger="tidal.worker.fanout"), pytest.raises(ValueError, match=r"^shard 1"):
        asyncio.run(scenario())
    assert "shard 0: stream closed by the shard" in caplog.text


def test_cancelling_the_caller_cancels_every_coroutine() -> None:
    cancelled: list[int] = []

    async def scenario() -> None:
        running = [asyncio.Event(), asyncio.Event()]

        async def forever(i: int) -> None:
            running[i].set()
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.append(i)

        task = asyncio.create_task(fan_out(forever(0), forever(1)))
        for event in running:
            await event.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sorted(cancelled) == [0, 1]


def test_close_closes_every_link_whatever_one_raised(caplog: pytest.LogCaptureFixture) -> None:
    closed: list[int] = []

    class FakeLink:
        def __init__(self, shard_index: int, fails: bool) -> None:
            self.shard_index, self.fails = shard_index, fails

        async def close(self) -> None:
            if self.fails:
                raise RuntimeError("channel already closed")
            closed.append(self.shard_index)

    run = TrainingRun.__new__(TrainingRun)  # close() needs only the links and the job id
    run.a = SimpleNamespace(job_id="job-1")  # type: ignore[assignment]
    run.links = [FakeLink(0, False), FakeLink(1, True), FakeLink(2, False)]  # type: ignore[list-item]
    with caplog.at_level(logging.WARNING, logger="tidal.worker.loop"):
        asyncio.run(run.close())
    assert closed == [0, 2]
    assert "shard 1: channel already closed" in caplog.text


# --- a shard link against a shard that answers with a bug --------------------------------

BUG = "shard bug: boom"


class BuggyShard:
    """Answers 'open' like a shard, then fails every later message as `how` says."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.streams = 0

    @translate_errors
    async def exchange(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.streams += 1
        async for raw in requests:
            kind = shard_pb.ExchangeRequest.FromString(raw).WhichOneof("kind")
            if kind == "open":
                opened = shard_pb.ExchangeOpened(shard_index=0, version=0)
                yield shard_pb.ExchangeResponse(opened=opened).SerializeToString()
            elif self.how == "raise":
                raise RuntimeError(BUG)  # grpc answers UNKNOWN
            else:
                await context.abort(grpc.StatusCode.INTERNAL, BUG)


async def _serve(shard: BuggyShard | None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    if shard is not None:  # without a handler the Exchange method is UNIMPLEMENTED
        service, method = frames.EXCHANGE_METHOD.strip("/").split("/")
        handler = grpc.stream_stream_rpc_method_handler(shard.exchange)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _link(port: int) -> ShardLink:
    params = torch.zeros(10)
    shard_map = build_shard_map(tensor_infos([("w", params)]), 1)
    return ShardLink(
        "job-1", "worker-1", 1, 0, f"127.0.0.1:{port}", shard_map, params, timeout_s=30.0,
        security=SecurityConfig(), shared_memory=False,
    )  # fmt: skip


async def _against_a_buggy_shard(how: str, action: str) -> tuple[InternalError, int, int]:
    shard = BuggyShard(how) if how != "unimplemented" else None
    server, port = await _serve(shard)
    link = _link(port)
    try:
        with pytest.raises(InternalError) as caught:
            if action == "connect":
                await link.connect(deadline_s=30.0)
            else:
                await link.open()
                if action == "pull":
                    await link.pull_recovering(0, deadline_s=30.0)
                else:
                    grads = torch.ones(10)
                    await link.push_recovering("worker-1:0", None, grads, 4, None, None, deadline_s=30.0)
    finally:
        await link.close()
        await server.stop(None)
    return caught.value, link.reconnects, shard.streams if shard else 1


@pytest.mark.parametrize("how", ["raise", "abort"])
@pytest.mark.parametrize("action", ["connect", "pull", "push"])
def test_a_shard_answering_with_a_bug_is_not_reconnected_to(how: str, action: str) -> None:
    err, reconnects, streams = asyncio.run(_against_a_buggy_shard(how, action))
    assert BUG in str(err) and "shard 0 (127.0.0.1:" in str(err), err
    assert reconnects == 0 and streams == 1  # one stream, no reconnection


def test_a_shard_without_the_exchange_method_fails_at_once() -> None:
    err, reconnects, _ = asyncio.run(_against_a_buggy_shard("unimplemented", "connect"))
    assert "shard 0 (127.0.0.1:" in str(err), err
    assert reconnects == 0


def test_a_shard_that_went_away_is_still_recovered_from() -> None:
    """Retryable errors keep going through `recover`: the push is made again afterwards."""
    calls: list[str] = []

    async def scenario() -> None:
        link = _link(1)
        attempts = iter([UnavailableError("shard 0: Stream removed (Socket closed)"), None])

        async def push(*args: object) -> tuple[str, str]:
            calls.append("push")
            failure = next(attempts)
            if failure is not None:
                raise failure
            return "ack", "times"

        async def recover(step: int | None, deadline_s: float) -> None:
            calls.append("recover")

        link.push, link.recover = push, recover  # type: ignore[method-assign, assignment]
        try:
            assert await link.push_recovering("w:0", 0, torch.ones(10), 1, None, None, 30.0) == ("ack", "times")
        finally:
            await link.close()

    asyncio.run(scenario())
    assert calls == ["push", "recover", "push"]


def test_shared_memory_made_for_a_cancelled_open_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A link cancelled while its shared memory is being made (a sibling failed) removes it
    once the thread is done, instead of leaving the files in /dev/shm."""
    removed: list[str] = []
    entered, release, closed = threading.Event(), threading.Event(), threading.Event()

    class FakeShared:
        def unlink(self) -> None:
            removed.append("unlink")

        def close(self) -> None:
            removed.append("close")
            closed.set()

    def create(payload_bytes: int) -> FakeShared:
        entered.set()
        release.wait()
        return FakeShared()

    monkeypatch.setattr(shm.SharedStream, "create", staticmethod(create))

    async def scenario() -> None:
        task = asyncio.create_task(shm.create_off_loop(40))
        await asyncio.to_thread(entered.wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        # The thread finishes, then its result is dropped.
        assert await asyncio.to_thread(closed.wait, 30)

    asyncio.run(scenario())
    assert removed == ["unlink", "close"]
