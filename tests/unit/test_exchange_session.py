"""The shard's Exchange protocol frame by frame (shard/exchange.py), without sockets: every way
a member with valid credentials could stall, corrupt or hang a job, refused precisely, and a
property test that interleaves honest and hostile members."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from tidal.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NonFiniteGradientError,
    PermissionDeniedError,
    TidalError,
)
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.shard_state import ShardState
from tidal.core.spec import parse_job_spec
from tidal.shard import exchange as exchange_module
from tidal.shard.exchange import ExchangeLimits, ExchangeSession
from tidal.shard.metrics import ShardMetrics
from tidal.shard.runtime import ShardRuntime
from tidal.transport import frames, serde
from tidal.transport.limits import MAX_CHUNKS_PER_MESSAGE
from tidal.v1 import shard_pb2 as shard_pb

TENSORS = (
    TensorInfo("layer.weight", (3, 4), "float32"),
    TensorInfo("layer.bias", (3,), "float32"),
    TensorInfo("head.weight", (2, 3), "float32"),
)
TOTAL = sum(t.numel for t in TENSORS)
EPOCH = 3
JOB = "job"
LR = 0.1
OUTCOMES = {v: k for k, v in shard_pb.PushOutcome.items()}


class Node:
    """What the shard process gives a session (shard/exchange.py `Runtimes`), recording calls."""

    def __init__(self, runtime: ShardRuntime) -> None:
        self.runtime: ShardRuntime | None = runtime
        self.last_runtime: ShardRuntime | None = runtime
        self.draining = False
        self.resumed: list[tuple[str, int, int]] = []
        self.pushes = 0

    def worker_resumed(self, worker_id: str, last_version: int, completed_pushes: int) -> None:
        self.resumed.append((worker_id, last_version, completed_pushes))

    def pushed(self) -> None:
        self.pushes += 1


def make_node(mode: str = "async", workers: Sequence[str] = ("w0", "w1"), steps: int = 50, **consistency: Any) -> Node:
    spec = parse_job_spec(
        {
            "mode": mode,
            "steps": steps,
            "num_workers": len(workers),
            "num_shards": 1,
            "optimizer": {"name": "sgd", "lr": LR},
            "consistency": consistency,
        }
    )
    initial = torch.randn(TOTAL, generator=torch.Generator().manual_seed(0))
    state = ShardState(spec, 0, build_shard_map(TENSORS, 1), initial, EPOCH, workers)
    return Node(ShardRuntime(JOB, state, ShardMetrics(CollectorRegistry()).for_job(JOB, mode, 0)))


def allow_all(worker_id: str, field: str) -> None:
    return None


def session_for(node: Node, limits: ExchangeLimits | None = None, authorize: Callable[[str, str], None] = allow_all):
    return ExchangeSession(node, accept_shared_memory=False, authorize=authorize, limits=limits)


def open_frame(worker: str, epoch: int = EPOCH, last_version: int = 0, completed_pushes: int = 0) -> frames.Frame:
    opening = shard_pb.ExchangeOpen(
        job_id=JOB,
        worker_id=worker,
        membership_epoch=epoch,
        last_version=last_version,
        completed_pushes=completed_pushes,
    )
    return frames.decode_request(shard_pb.ExchangeRequest(open=opening).SerializeToString())


def push_frames(
    push_id: str, base: int, grad: torch.Tensor, per_chunk: int | None = None, per_message: int | None = None
) -> list[frames.Frame]:
    """A push as a worker sends it (honest chunking by default), or cut into chunks of
    `per_chunk` elements and messages of `per_message` chunks."""
    segments = build_shard_map(TENSORS, 1).segments(0)
    chunk_bytes = (per_chunk or TOTAL) * grad.element_size()
    chunks = list(serde.encoded_chunks(grad, segments, 0, chunk_bytes=chunk_bytes))
    size = per_message or MAX_CHUNKS_PER_MESSAGE
    groups = [chunks[i : i + size] for i in range(0, len(chunks), size)]
    return [
        frames.decode_request(frames.encode_push(push_id, base, EPOCH, base, 1, g, i == len(groups) - 1))
        for i, g in enumerate(groups)
    ]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def replies(session: ExchangeSession, frame: frames.Frame) -> list[Any]:
    return [r async for r in session.handle(frame)]


async def push(session: ExchangeSession, push_frames_: list[frames.Frame]) -> shard_pb.PushAck:
    """Sends every message of a push; the ack."""
    out: list[Any] = []
    for f in push_frames_:
        out += await replies(session, f)
    acks = [r.ack for r in out if isinstance(r, shard_pb.ExchangeResponse) and r.HasField("ack")]
    assert len(acks) == 1, out
    return acks[0]


def grad(seed: int) -> torch.Tensor:
    return torch.randn(TOTAL, generator=torch.Generator().manual_seed(100 + seed))


def params(node: Node) -> torch.Tensor:
    assert node.runtime is not None
    return node.runtime.state.params.detach().clone()


# --- opening ---------------------------------------------------------------------------


def test_the_first_frame_must_be_open() -> None:
    async def body() -> None:
        node = make_node()
        with pytest.raises(InvalidArgumentError, match="first message of an Exchange stream must be 'open'"):
            await session_for(node).open(push_frames("w0:0", 0, grad(0))[0])
        with pytest.raises(InvalidArgumentError, match="must be 'open'"):
            await session_for(node).open(None)
        with pytest.raises(FailedPreconditionError, match="not opened"):
            await replies(session_for(node), push_frames("w0:0", 0, grad(0))[0])

    run(body())


def test_a_caller_cannot_open_a_stream_for_another_member() -> None:
    def only_w0(worker_id: str, field: str) -> None:
        if worker_id != "w0":
            raise PermissionDeniedError(f"{field}: this caller speaks for w0, not {worker_id}")

    async def body() -> None:
        node = make_node()
        await session_for(node, authorize=only_w0).open(open_frame("w0"))
        with pytest.raises(PermissionDeniedError, match=r"open\.worker_id"):
            await session_for(node, authorize=only_w0).open(open_frame("w1"))

    run(body())


@pytest.mark.parametrize(
    ("counters", "field"),
    [
        ({"completed_pushes": 10**15}, "open.completed_pushes"),
        ({"completed_pushes": -1}, "open.completed_pushes"),
        ({"last_version": 10**15}, "open.last_version"),
        ({"last_version": -5}, "open.last_version"),
    ],
)
def test_resume_counters_that_cannot_be_true_are_refused(counters: dict[str, int], field: str) -> None:
    async def body() -> None:
        node = make_node()
        with pytest.raises(InvalidArgumentError, match=re.escape(field)):
            await session_for(node).open(open_frame("w0", **counters))
        assert node.resumed == []

    run(body())


def test_resume_counters_within_the_job_reach_the_recovery_ledger() -> None:
    async def body() -> None:
        node = make_node(steps=50)  # async, 2 workers: 100 versions
        await session_for(node).open(open_frame("w0", last_version=100, completed_pushes=100))
        assert node.resumed == [("w0", 100, 100)]

    run(body())


# --- bounded work ------------------------------------------------------------------------


def test_a_message_of_more_chunks_than_the_limit_is_refused_while_decoding() -> None:
    def tiny(n: int) -> list[frames.Encoded]:
        code = serde.dtype_to_proto(torch.float32)
        return [frames.encode_chunk("layer.bias", code, [3], 0, b"\0\0\0\0") for _ in range(n)]

    data = frames.encode_push("w0:0", 0, EPOCH, 0, 1, tiny(MAX_CHUNKS_PER_MESSAGE + 1), True)
    with pytest.raises(DecodeError, match=f"more than {MAX_CHUNKS_PER_MESSAGE} chunks in one message"):
        frames.decode_request(data)
    # Exactly the limit decodes.
    limit = frames.encode_push("w0:0", 0, EPOCH, 0, 1, tiny(MAX_CHUNKS_PER_MESSAGE), True)
    assert len(frames.decode_request(limit).body.chunks) == MAX_CHUNKS_PER_MESSAGE


def test_honest_senders_split_many_small_tensors_over_messages_within_the_limit() -> None:
    chunk = frames.encode_chunk("t", 1, [1], 0, b"\0\0\0\0")
    groups = list(serde.group_encoded([chunk] * (2 * MAX_CHUNKS_PER_MESSAGE + 5)))
    assert [len(g) for g in groups] == [MAX_CHUNKS_PER_MESSAGE, MAX_CHUNKS_PER_MESSAGE, 5]
    many = tuple(TensorInfo(f"t{i}", (1,), "float32") for i in range(600))
    shared = serde.shared_chunks(torch.float32, build_shard_map(many, 1).segments(0), 0)
    assert [len(g) for g in shared] == [256, 256, 88]


def test_a_push_with_more_chunks_than_its_slice_needs_is_refused_and_changes_nothing() -> None:
    async def body() -> None:
        node = make_node()
        session = session_for(node)
        await session.open(open_frame("w0"))
        before = params(node)
        # One element per chunk: 21 chunks where an honest worker sends 3 (the budget is 6).
        pieces = push_frames("w0:0", 0, grad(0), per_chunk=1, per_message=4)
        with pytest.raises(InvalidArgumentError, match=r"push.chunks: more than 6 chunks in push 'w0:0'"):
            for f in pieces:
                await replies(session, f)
        session.close()
        assert torch.equal(params(node), before)
        assert node.runtime is not None and not node.runtime.scratch.in_use
        assert node.runtime.metrics.rejected["bad_input"]._value.get() == 1

    run(body())


def test_assembly_gives_the_event_loop_a_turn_every_few_chunks() -> None:
    async def body() -> None:
        node = make_node()
        limits = ExchangeLimits(chunks_per_turn=4, push_chunk_factor=100)
        session = session_for(node, limits)
        await session.open(open_frame("w0"))
        turns = 0

        async def ticker() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        counted = turns
        (message,) = push_frames("w0:0", 0, grad(0), per_chunk=1)  # 21 one-element chunks, one message
        ack = await push(session, [message])
        task.cancel()
        assert OUTCOMES[ack.outcome] == "PUSH_OUTCOME_APPLIED"
        # 21 chunks in batches of 4: the loop ran other tasks between the six batches.
        assert turns - counted >= math.ceil(TOTAL / 4) - 1

    run(body())


# --- identity, dedup and validation ------------------------------------------------------


def test_a_late_push_under_another_members_id_does_not_swallow_that_members_push() -> None:
    async def body() -> None:
        node = make_node(mode="sync")
        w0, w1 = session_for(node), session_for(node)
        await w0.open(open_frame("w0"))
        await w1.open(open_frame("w1"))
        # Step 0: both push; w0's ack waits for the barrier, so w1 pushes first here.
        acks = await asyncio.gather(
            push(w0, push_frames("w0:0", 0, grad(0))), push(w1, push_frames("w1:0", 0, grad(1)))
        )
        assert {OUTCOMES[a.outcome] for a in acks} <= {"PUSH_OUTCOME_APPLIED", "PUSH_OUTCOME_BUFFERED"}
        # The attack: w1 sends a late push under w0's next id.
        forged = await push(w1, push_frames("w0:1", 0, grad(2)))
        assert OUTCOMES[forged.outcome] == "PUSH_OUTCOME_DROPPED_LATE"
        acks = await asyncio.gather(
            push(w0, push_frames("w0:1", 1, grad(3))), push(w1, push_frames("w1:1", 1, grad(4)))
        )
        assert "PUSH_OUTCOME_DUPLICATE" not in {OUTCOMES[a.outcome] for a in acks}
        assert node.runtime is not None and node.runtime.state.version == 2

    run(body())


def test_a_non_finite_gradient_under_a_used_push_id_is_refused() -> None:
    async def body() -> None:
        node = make_node()
        session = session_for(node)
        await session.open(open_frame("w0"))
        await push(session, push_frames("w0:0", 0, grad(0)))
        before = params(node)
        with pytest.raises(NonFiniteGradientError, match="NaN or Inf"):
            await push(session, push_frames("w0:0", 0, torch.full((TOTAL,), float("nan"))))
        assert torch.equal(params(node), before)

    run(body())


def test_a_stream_that_ends_inside_a_push_ends_with_an_error_and_frees_its_buffer() -> None:
    async def body() -> None:
        node = make_node()
        session = session_for(node)
        await session.open(open_frame("w0"))
        before = params(node)
        first, *_ = push_frames("w0:0", 0, grad(0), per_chunk=4, per_message=2)
        assert await replies(session, first) == []
        assert node.runtime is not None and node.runtime.scratch.in_use
        with pytest.raises(InvalidArgumentError, match="the stream ended inside push 'w0:0'"):
            session.end()
        session.close()
        assert not node.runtime.scratch.in_use
        assert torch.equal(params(node), before)
        # Between pushes, ending is fine.
        other = session_for(node)
        await other.open(open_frame("w1"))
        await push(other, push_frames("w1:0", 0, grad(1)))
        other.end()

    run(body())


def test_a_new_push_id_before_the_last_message_is_refused() -> None:
    async def body() -> None:
        node = make_node()
        session = session_for(node)
        await session.open(open_frame("w0"))
        first = push_frames("w0:0", 0, grad(0), per_chunk=4, per_message=2)[0]
        await replies(session, first)
        other = frames.decode_request(
            frames.encode_push("w0:9", 0, EPOCH, 0, 1, list(serde.encoded_chunks(grad(0), [], 0)), True)
        )
        with pytest.raises(InvalidArgumentError, match=r"push.push_id: 'w0:9' started before push 'w0:0' ended"):
            await replies(session, other)

    run(body())


# --- the property: honest and hostile members interleaved ------------------------------------


@dataclass
class Tally:
    """What one member sent and what became of it, from its own side of the streams."""

    sent: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    applied_grads: list[torch.Tensor] = field(default_factory=list)

    def count(self, verdict: str) -> None:
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1


ACTIONS = ("honest", "repeat", "forge", "nan", "too_many_chunks", "truncated", "stale", "bad_resume")


def _frames_for(action: str, worker: str, steps: dict[str, int], base: int, g: torch.Tensor) -> list[Any]:
    """The frames one member sends for `action` (all but `bad_resume`)."""
    push_id = f"{worker}:{steps[worker]}"
    last_id = f"{worker}:{steps[worker] - 1}" if steps[worker] else f"{worker}:before"
    victim = "w1" if worker == "w0" else "w0"
    make = {
        "honest": lambda: push_frames(push_id, base, g),
        # Its last honest push again (or, before any, an id of its own it repeats later).
        "repeat": lambda: push_frames(last_id, base, g),
        "forge": lambda: push_frames(f"{victim}:{steps[victim]}", base, g),
        "nan": lambda: push_frames(push_id + "x", base, torch.full((TOTAL,), float("nan"))),
        "too_many_chunks": lambda: push_frames(push_id + "y", base, g, per_chunk=1, per_message=5),
        "stale": lambda: push_frames(push_id + "z", max(0, base - 3), g),
        # The first message only, then the worker goes away and reconnects.
        "truncated": lambda: push_frames(push_id + "t", base, g, per_chunk=4, per_message=2)[:1],
    }
    return make[action]()


async def _send(session: ExchangeSession, pieces: list[Any], truncated: bool) -> str:
    """Sends one push's frames; the verdict the member gets (an ack's outcome or an error's type)."""
    try:
        out: list[Any] = []
        for f in pieces:
            out += await replies(session, f)
        if truncated:
            session.end()
    except TidalError as exc:
        return type(exc).__name__
    acks = [r.ack for r in out if isinstance(r, shard_pb.ExchangeResponse) and r.HasField("ack")]
    return OUTCOMES[acks[0].outcome]


def _check_books(node: Any, tallies: dict[str, Tally], initial: torch.Tensor) -> None:
    """Every push got one verdict, the shard's counters agree with them, and the parameters
    moved by exactly the accepted gradients."""
    counters = node.runtime.state.counters
    for tally in tallies.values():
        assert sum(tally.verdicts.values()) == tally.sent
    verdicts: dict[str, int] = {}
    for tally in tallies.values():
        for k, v in tally.verdicts.items():
            verdicts[k] = verdicts.get(k, 0) + v
    assert counters.updates_applied == verdicts.get("PUSH_OUTCOME_APPLIED", 0)
    # A repeat of a taken push is a duplicate; one of a refused push is judged again.
    not_taken = ("PUSH_OUTCOME_REJECTED_STALE", "PUSH_OUTCOME_DUPLICATE", "PUSH_OUTCOME_DROPPED_LATE")
    booked = sum(counters.rejected.get(reason, 0) for reason in ("stale", "duplicate", "late"))
    assert booked == sum(verdicts.get(v, 0) for v in not_taken)
    refused = sum(v for k, v in verdicts.items() if not k.startswith("PUSH_OUTCOME"))
    bad = node.runtime.metrics.rejected
    assert bad["bad_input"]._value.get() + bad["non_finite"]._value.get() == refused
    expected = initial - LR * sum((g for t in tallies.values() for g in t.applied_grads), torch.zeros(TOTAL))
    torch.testing.assert_close(params(node), expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.lists(st.tuples(st.sampled_from(("w0", "w1", "w2")), st.sampled_from(ACTIONS)), min_size=1, max_size=25))
def test_honest_and_hostile_members_interleaved(plan: list[tuple[str, str]]) -> None:
    batches: list[int] = []
    real_add = exchange_module.SliceAssembler.add

    def recording_add(self: Any, chunks: Any) -> None:
        chunks = list(chunks)
        batches.append(len(chunks))
        real_add(self, chunks)

    async def body() -> None:
        # Async with a staleness bound: every accepted gradient is one plain SGD step, so the
        # parameters must equal the initial ones minus LR times the accepted gradients.
        node = make_node(mode="async", workers=("w0", "w1", "w2"), steps=1000, max_staleness=2)
        assert node.runtime is not None
        state = node.runtime.state
        initial = params(node)
        limits = ExchangeLimits(chunks_per_turn=8)
        sessions: dict[str, ExchangeSession] = {}
        tallies = {w: Tally() for w in ("w0", "w1", "w2")}
        steps = dict.fromkeys(tallies, 0)

        for i, (worker, action) in enumerate(plan):
            if action == "bad_resume":
                with pytest.raises(InvalidArgumentError, match="completed_pushes"):
                    await session_for(node, limits).open(open_frame(worker, completed_pushes=10**12))
                continue
            if worker not in sessions:
                sessions[worker] = session_for(node, limits)
                await sessions[worker].open(open_frame(worker))
            g = grad(i)
            pieces = _frames_for(action, worker, steps, state.version, g)
            steps[worker] += action == "honest"
            tallies[worker].sent += 1
            verdict = await _send(sessions[worker], pieces, action == "truncated")
            tallies[worker].count(verdict)
            if action == "honest":
                # Nothing another member sent, forged ids included, changes an honest push.
                assert verdict == "PUSH_OUTCOME_APPLIED"
            if verdict == "PUSH_OUTCOME_APPLIED":
                tallies[worker].applied_grads.append(g)
            elif not verdict.startswith("PUSH_OUTCOME"):
                sessions.pop(worker).close()  # the stream ended with that error; the worker reconnects
        for session in sessions.values():
            session.close()

        _check_books(node, tallies, initial)
        # No buffer left taken, and no batch of work bigger than one turn's.
        assert not node.runtime.scratch.in_use
        assert all(b <= limits.chunks_per_turn for b in batches)

    exchange_module.SliceAssembler.add = recording_add  # type: ignore[method-assign]
    try:
        run(body())
    finally:
        exchange_module.SliceAssembler.add = real_add  # type: ignore[method-assign]
