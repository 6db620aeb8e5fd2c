"""A plain sync step taken range by range (ShardState.open_ranged / add_ranged / finish_ranged,
and the Exchange session that drives them): the parameters of each range go back while the
rest of the gradients still come up, and the result is the whole step's, bit for bit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

from tidal.core.clock_sums import RangedPush
from tidal.core.errors import FailedPreconditionError, InvalidArgumentError, NonFiniteGradientError
from tidal.core.push_outcomes import PushOutcome
from tidal.core.range_barrier import MIN_RANGE_ELEMENTS
from tidal.core.shard_map import TensorInfo, build_shard_map
from tidal.core.shard_state import ShardState
from tidal.core.spec import parse_job_spec
from tidal.shard.exchange import ExchangeSession
from tidal.shard.metrics import ShardMetrics
from tidal.shard.runtime import ShardRuntime
from tidal.transport import frames, serde
from tidal.v1 import shard_pb2 as shard_pb

# Two tensors, 2.5 ranges' worth of elements: a step is applied in parts.
TENSORS = (
    TensorInfo("a", (MIN_RANGE_ELEMENTS + 1000,), "float32"),
    TensorInfo("b", (3, MIN_RANGE_ELEMENTS // 2 - 333), "float32"),
)
TOTAL = sum(t.numel for t in TENSORS)
EPOCH = 2
WORKERS = ("w0", "w1")
OPTIMIZER = {"name": "sgd", "lr": 0.1, "momentum": 0.9}


def make_state(workers: Sequence[str] = WORKERS, mode: str = "sync", **consistency: Any) -> ShardState:
    spec = parse_job_spec(
        {
            "mode": mode,
            "steps": 10,
            "num_workers": len(workers),
            "num_shards": 1,
            "optimizer": OPTIMIZER,
            "consistency": consistency,
        }
    )
    initial = torch.randn(TOTAL, generator=torch.Generator().manual_seed(0))
    return ShardState(spec, 0, build_shard_map(TENSORS, 1), initial, EPOCH, workers)


def grad(worker: str, clock: int) -> torch.Tensor:
    return torch.randn(TOTAL, generator=torch.Generator().manual_seed(hash((worker, clock)) % 2**31))


def whole_clock(state: ShardState, clock: int, workers: Sequence[str] = WORKERS) -> None:
    for w in workers:
        state.push(w, f"{w}:{clock}", clock, EPOCH, grad(w, clock))


def start_pushes(
    state: ShardState, workers: Sequence[str], clock: int, elements: int, epoch: int = EPOCH
) -> list[RangedPush]:
    """Each worker's push for `clock` taken range by range, its first `elements` sent."""
    pushes = []
    for w in workers:
        taken = state.open_ranged(w, f"{w}:{clock}", clock, epoch)
        assert taken is not None
        state.add_ranged(taken, 0, grad(w, clock)[:elements], "push.chunks")
        pushes.append(taken)
    return pushes


def ranged_clock(state: ShardState, clock: int, piece: int = 300_000) -> list[int]:
    """Both workers' gradients for `clock`, taken range by range and interleaved; how much of
    the slice held the next version after each piece."""
    pushes = {w: state.open_ranged(w, f"{w}:{clock}", clock, EPOCH) for w in WORKERS}
    applied = []
    for start in range(0, TOTAL, piece):
        for w, taken in pushes.items():
            assert taken is not None
            state.add_ranged(taken, start, grad(w, clock)[start : start + piece], "push.chunks")
            applied.append(state.applied_to(clock))
    for taken in pushes.values():
        assert taken is not None
        assert state.finish_ranged(taken).outcome is PushOutcome.APPLIED
    return applied


def test_a_step_taken_range_by_range_equals_the_whole_step_bit_for_bit() -> None:
    whole, ranged = make_state(), make_state()
    whole_clock(whole, 0)
    whole_clock(ranged, 0)  # the first step creates the momentum from a whole gradient
    assert ranged.open_ranged("w0", "w0:0", 0, EPOCH) is None  # ... and is remembered
    for clock in (1, 2, 3):
        whole_clock(whole, clock)
        applied = ranged_clock(ranged, clock)
        # Parts of the slice were applied before the last gradient came, in growing steps.
        assert 0 < min(a for a in applied if a) < TOTAL
        assert applied == sorted(applied) and applied[-1] == TOTAL
    assert ranged.version == whole.version == 4
    assert torch.equal(ranged.params.detach(), whole.params.detach())
    momentum = "momentum_buffer"
    assert torch.equal(ranged.optimizer.state[ranged.params][momentum], whole.optimizer.state[whole.params][momentum])


def test_while_a_step_is_applied_in_part_the_shard_says_so() -> None:
    state = make_state()
    whole_clock(state, 0)
    first = MIN_RANGE_ELEMENTS + 64
    start_pushes(state, WORKERS, 1, first)
    assert state.partial and state.version == 1 and state.applied_to(1) == first
    assert state.applied_to(0) == TOTAL


def test_a_resent_push_resumes_and_a_finished_one_is_a_duplicate() -> None:
    state = make_state()
    whole_clock(state, 0)
    w0 = state.open_ranged("w0", "w0:1", 1, EPOCH)
    assert w0 is not None
    state.add_ranged(w0, 0, grad("w0", 1)[:500_000], "push.chunks")
    again = state.open_ranged("w0", "w0:1", 1, EPOCH)  # the stream broke; the worker sends it all again
    assert again == w0
    state.add_ranged(again, 0, grad("w0", 1), "push.chunks")
    state.finish_ranged(again)
    with pytest.raises(FailedPreconditionError, match="already pushed a gradient for clock 1"):
        state.open_ranged("w0", "w0:other", 1, EPOCH)
    whole_clock(state, 1, ["w1"])
    assert state.version == 2
    reference = make_state()
    whole_clock(reference, 0)
    whole_clock(reference, 1)
    assert torch.equal(state.params.detach(), reference.params.detach())
    assert state.open_ranged("w0", "w0:1", 1, EPOCH) is None
    assert state.push("w0", "w0:1", 1, EPOCH, grad("w0", 1)).outcome is PushOutcome.DUPLICATE


def test_a_push_that_stops_short_is_refused_at_its_end() -> None:
    state = make_state()
    whole_clock(state, 0)
    w0 = state.open_ranged("w0", "w0:1", 1, EPOCH)
    assert w0 is not None
    state.add_ranged(w0, 0, grad("w0", 1)[:1000], "push.chunks")
    with pytest.raises(InvalidArgumentError, match=f"push.chunks: chunks cover 1000 of {TOTAL} elements"):
        state.finish_ranged(w0)


def test_a_newcomer_to_a_step_already_applied_in_part_is_late_for_it() -> None:
    state = make_state(workers=("w0", "w1", "w2"))
    whole_clock(state, 0, ["w0", "w1", "w2"])
    state.set_membership(EPOCH + 1, ["w0", "w1", "w2", "late"])
    start_pushes(state, ["w0", "w1", "w2"], 1, MIN_RANGE_ELEMENTS + 64, epoch=EPOCH + 1)
    assert state.partial
    assert state.open_ranged("late", "late:1", 1, EPOCH + 1) is None
    result = state.push("late", "late:1", 1, EPOCH + 1, grad("late", 1))
    assert result.outcome is PushOutcome.DROPPED_LATE and result.serve_version == 2
    # The step does not wait for it; from the next one on it counts.
    assert "late" not in state.view().expected(1) and "late" in state.view().expected(2)


def test_a_worker_that_leaves_mid_push_counts_where_its_gradient_came() -> None:
    state = make_state(workers=("w0", "w1", "gone"))
    whole_clock(state, 0, ["w0", "w1", "gone"])
    before = state.params.detach().clone()
    cut = 200_000
    start_pushes(state, ["gone"], 1, cut)
    start_pushes(state, ["w0", "w1"], 1, TOTAL)
    assert state.version == 1  # still waiting for "gone"
    state.set_membership(EPOCH + 1, ["w0", "w1"])
    assert state.version == 2
    # The first elements took the mean of three gradients, the rest of two: SGD with momentum
    # on its second step, checked on one element of each part.
    m0 = torch.stack([grad(w, 0) for w in ("w0", "w1", "gone")]).mean(0)
    for i, contributors in ((cut - 1, ("w0", "w1", "gone")), (cut, ("w0", "w1"))):
        g1 = torch.stack([grad(w, 1)[i] for w in contributors]).mean(0)
        expected = before[i] - 0.1 * (0.9 * m0[i] + g1)
        torch.testing.assert_close(state.params.detach()[i], expected)


@pytest.mark.parametrize(
    ("mode", "consistency"), [("sync", {"backup_workers": 1}), ("ssp", {"staleness_bound": 2}), ("async", {})]
)
def test_only_plain_sync_is_taken_range_by_range(mode: str, consistency: dict[str, Any]) -> None:
    state = make_state(mode=mode, **consistency)
    whole_clock(state, 0)
    assert state.open_ranged("w0", "w0:x", state.version, EPOCH) is None


# --- the Exchange session --------------------------------------------------------------


def _runtime(mode: str = "sync", **consistency: Any) -> ShardRuntime:
    state = make_state(mode=mode, **consistency)
    return ShardRuntime("job", state, ShardMetrics(CollectorRegistry()).for_job("job", mode, 0))


class FakeNode:
    """The shard process as a session sees it (shard/runtimes.Runtimes), around one runtime."""

    def __init__(self, runtime: ShardRuntime) -> None:
        self.runtime = self.last_runtime = runtime
        self.draining = False

    def worker_resumed(self, worker_id: str, last_version: int, completed_pushes: int) -> None:
        return None

    def pushed(self) -> None:
        return None


def _open(worker: str) -> frames.Frame:
    opening = shard_pb.ExchangeOpen(job_id="job", worker_id=worker, membership_epoch=EPOCH, range_replies=True)
    return frames.decode_request(shard_pb.ExchangeRequest(open=opening).SerializeToString())


def _push_messages(worker: str, clock: int, g: torch.Tensor, messages: int | None = None) -> list[frames.Frame]:
    """The push's messages; `messages` cuts it short, its last one marked last."""
    segments = build_shard_map(TENSORS, 1).segments(0)
    groups = list(serde.group_encoded(serde.encoded_chunks(g, segments, 0)))[:messages]
    return [
        frames.decode_request(
            frames.encode_push(f"{worker}:{clock}", clock, EPOCH, clock, 1, group, i == len(groups) - 1)
        )
        for i, group in enumerate(groups)
    ]


def _kinds(responses: list[Any]) -> list[str]:
    return ["ack" if isinstance(r, shard_pb.ExchangeResponse) else frames.decode_response(r).kind for r in responses]


def test_a_ranged_push_gets_parameters_back_before_its_last_message() -> None:
    async def main() -> None:
        runtime = _runtime()
        whole_clock(runtime.state, 0)
        node = FakeNode(runtime)
        sessions = {w: ExchangeSession(node, False, lambda *_: None) for w in WORKERS}
        for w, session in sessions.items():
            opened = await session.open(_open(w))
            assert opened.opened.range_replies
        messages = {w: _push_messages(w, 1, grad(w, 1)) for w in WORKERS}
        got: dict[str, list[Any]] = {w: [] for w in WORKERS}
        for i in range(len(messages["w0"]) - 1):  # every message but the last, interleaved
            for w in WORKERS:
                got[w] += [r async for r in sessions[w].handle(messages[w][i])]
        early = {w: _kinds(got[w]) for w in WORKERS}
        assert all(k == "params" for k in early["w0"]) and len(early["w0"]) >= 4

        async def last(w: str) -> None:  # the streams run side by side, as they do in the shard
            got[w] += [r async for r in sessions[w].handle(messages[w][-1])]

        await asyncio.gather(*(last(w) for w in WORKERS))
        for w in WORKERS:
            kinds = _kinds(got[w])
            assert kinds.count("ack") == 1 and kinds.count("params") > 4
            assembled = torch.empty(TOTAL)
            assembler = serde.SliceAssembler(build_shard_map(TENSORS, 1).segments(0), 0, assembled, "params")
            for r in got[w]:
                if not isinstance(r, shard_pb.ExchangeResponse):
                    assembler.add(frames.decode_response(r).body.chunks)
            assembler.finish()
            assert torch.equal(assembled, runtime.state.params.detach())
        reference = make_state()
        whole_clock(reference, 0)
        whole_clock(reference, 1)
        assert torch.equal(runtime.state.params.detach(), reference.params.detach())

    asyncio.run(main())


def test_a_non_finite_range_is_refused_naming_its_chunk() -> None:
    async def main() -> None:
        runtime = _runtime()
        whole_clock(runtime.state, 0)
        session = ExchangeSession(FakeNode(runtime), False, lambda *_: None)
        await session.open(_open("w0"))
        bad = grad("w0", 1)
        bad[TOTAL - 5] = float("nan")
        messages = _push_messages("w0", 1, bad)
        for m in messages[:-1]:
            [r async for r in session.handle(m)]
        with pytest.raises(NonFiniteGradientError, match=r"push.chunks\[\d+\]: gradient contains NaN"):
            [r async for r in session.handle(messages[-1])]
        # Counted once, as non-finite: not as bad input too.
        assert runtime.metrics.rejected["non_finite"]._value.get() == 1
        assert runtime.metrics.rejected["bad_input"]._value.get() == 0

    asyncio.run(main())


def test_a_ranged_push_that_ends_short_of_its_slice_is_refused_and_counted_once() -> None:
    async def main() -> None:
        runtime = _runtime()
        whole_clock(runtime.state, 0)
        session = ExchangeSession(FakeNode(runtime), False, lambda *_: None)
        await session.open(_open("w0"))
        messages = _push_messages("w0", 1, grad("w0", 1), messages=2)
        [r async for r in session.handle(messages[0])]
        with pytest.raises(InvalidArgumentError, match=rf"push.chunks: chunks cover \d+ of {TOTAL} elements"):
            [r async for r in session.handle(messages[1])]
        assert runtime.metrics.rejected["bad_input"]._value.get() == 1

    asyncio.run(main())


@pytest.mark.parametrize(
    ("mode", "consistency", "agreed"),
    [
        ("sync", {}, True),
        ("sync", {"backup_workers": 1}, False),
        ("ssp", {"staleness_bound": 2}, False),
        ("async", {}, False),
    ],
)
def test_a_shard_agrees_to_range_replies_only_for_plain_sync(
    mode: str, consistency: dict[str, Any], agreed: bool
) -> None:
    async def main() -> None:
        session = ExchangeSession(FakeNode(_runtime(mode, **consistency)), False, lambda *_: None)
        opened = await session.open(_open("w0"))
        assert opened.opened.range_replies is agreed

    asyncio.run(main())


def test_a_step_begun_by_workers_that_all_left_is_completed_by_their_replacements() -> None:
    state = make_state()
    whole_clock(state, 0)
    start_pushes(state, WORKERS, 1, MIN_RANGE_ELEMENTS + 64)
    state.set_membership(EPOCH + 1, ["new0", "new1"])  # both were lost mid-push
    assert state.partial
    # The first replacement joins the clock for the ranges still to come; once it is in, the
    # second is late for it, as for any clock begun without it, and counts from the next one.
    new0 = state.open_ranged("new0", "new0:1", 1, EPOCH + 1)
    assert new0 is not None
    assert state.open_ranged("new1", "new1:1", 1, EPOCH + 1) is None
    assert state.push("new1", "new1:1", 1, EPOCH + 1, grad("new1", 1)).outcome is PushOutcome.DROPPED_LATE
    state.add_ranged(new0, 0, grad("new0", 1), "push.chunks")
    state.finish_ranged(new0)
    assert state.version == 2 and not state.partial
    assert state.view().expected(2) == {"new0", "new1"}


@pytest.mark.parametrize("order", ["swapped", "repeated"])
def test_a_ranged_push_whose_chunks_leave_slice_order_is_refused_naming_the_chunk(order: str) -> None:
    async def main() -> None:
        runtime = _runtime()
        whole_clock(runtime.state, 0)
        session = ExchangeSession(FakeNode(runtime), False, lambda *_: None)
        await session.open(_open("w0"))
        messages = _push_messages("w0", 1, grad("w0", 1))
        [r async for r in session.handle(messages[0])]
        bad = messages[2] if order == "swapped" else messages[0]
        with pytest.raises(
            InvalidArgumentError, match=r"push.chunks\[\d+\].offset: starts at element \d+ .* slice order"
        ):
            [r async for r in session.handle(bad)]
        assert runtime.metrics.rejected["bad_input"]._value.get() == 1
        assert runtime.state.version == 1 and not runtime.state.partial

    asyncio.run(main())


def test_a_push_resent_on_a_new_stream_resumes_and_changes_nothing_twice() -> None:
    async def main() -> None:
        runtime = _runtime()
        whole_clock(runtime.state, 0)
        node = FakeNode(runtime)
        first = ExchangeSession(node, False, lambda *_: None)
        await first.open(_open("w0"))
        messages = {w: _push_messages(w, 1, grad(w, 1)) for w in WORKERS}
        for m in messages["w0"][:3]:
            [r async for r in first.handle(m)]
        first.close()  # the stream broke; the worker reconnects and sends the push again
        sessions = {w: ExchangeSession(node, False, lambda *_: None) for w in WORKERS}
        for w, session in sessions.items():
            await session.open(_open(w))

        async def send(w: str) -> list[Any]:
            out: list[Any] = []
            for m in messages[w]:
                out += [r async for r in sessions[w].handle(m)]
            return out

        await asyncio.gather(*(send(w) for w in WORKERS))
        reference = make_state()
        whole_clock(reference, 0)
        whole_clock(reference, 1)
        assert torch.equal(runtime.state.params.detach(), reference.params.detach())

    asyncio.run(main())
