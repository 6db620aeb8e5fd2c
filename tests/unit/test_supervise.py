"""Supervision: a crashed long-lived task stops the process (non-zero, traceback logged);
cancelled work is waited for; a thread still building never keeps the process from exiting;
a coordinator session closes even when handling a message failed."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

# isort: split
from tidal.coordinator.control import Control
from tidal.coordinator.main import CRASH_CONTROL_LOOP, run_coordinator
from tidal.coordinator.metrics import CoordinatorCounters
from tidal.coordinator.servicer import CoordinatorServicer
from tidal.core import commands
from tidal.core.errors import InvalidArgumentError
from tidal.core.events import Event, WorkerProgressReport
from tidal.core.job_records import Job
from tidal.core.membership import MemberState, Role
from tidal.core.plan import job_layout
from tidal.core.spec import parse_job_spec
from tidal.transport.server import create_channel, create_server
from tidal.transport.session import MemberSession
from tidal.transport.settings import ServiceSettings
from tidal.transport.supervise import Supervisor, cancel_and_wait
from tidal.transport.tls import SecurityConfig
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb
from tidal.v1 import coordinator_pb2_grpc as coord_grpc
from tidal.worker.main import WorkerNode
from tidal.worker.metrics import WorkerMetrics


async def _crash(after: asyncio.Event) -> None:
    await after.wait()
    raise RuntimeError("the loop broke")


def test_a_crashed_task_is_logged_with_its_traceback_and_stops_the_process(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> list[str]:
        stop, go = asyncio.Event(), asyncio.Event()
        supervisor = Supervisor(stop)
        supervisor.spawn("control loop", _crash(go))
        supervisor.spawn("server", asyncio.Event().wait())
        go.set()
        await stop.wait()
        await supervisor.close()
        return supervisor.failures

    with caplog.at_level(logging.ERROR, "tidal.transport.supervise"):
        assert asyncio.run(run()) == ["control loop"]
    [record] = caplog.records
    assert record.getMessage() == "control loop crashed; the process stops"
    assert record.exc_info is not None
    assert "RuntimeError: the loop broke" in "".join(traceback.format_exception(*record.exc_info))


def test_a_task_that_ends_while_needed_is_a_failure_unless_it_may_end() -> None:
    async def run() -> tuple[list[str], bool]:
        stop = asyncio.Event()
        supervisor = Supervisor(stop)
        await supervisor.spawn("one-job", asyncio.sleep(0), may_end=True)
        stopped_by_bounded_job = stop.is_set()
        supervisor.spawn("REST server", asyncio.sleep(0))
        await stop.wait()
        await supervisor.close()
        return supervisor.failures, stopped_by_bounded_job

    assert asyncio.run(run()) == (["REST server"], False)


def test_close_cancels_and_waits_and_a_cancelled_task_is_no_failure() -> None:
    async def run() -> tuple[bool, bool]:
        stop = asyncio.Event()
        supervisor = Supervisor(stop)
        task = supervisor.spawn("server", asyncio.Event().wait())
        await asyncio.sleep(0)
        await supervisor.close()
        return task.cancelled(), supervisor.failed

    assert asyncio.run(run()) == (True, False)


def test_tasks_that_ended_are_forgotten() -> None:
    # A shard spawns reporters and checkpoint writes for every job: they must not pile up.
    async def run() -> tuple[int, int, bool]:
        supervisor = Supervisor(asyncio.Event())
        server = supervisor.spawn("server", asyncio.Event().wait())
        ended = [supervisor.spawn(f"job {i} reporter", asyncio.sleep(0), may_end=True) for i in range(100)]
        cancelled = [supervisor.spawn(f"job {i} writer", asyncio.Event().wait()) for i in range(100)]
        await cancel_and_wait(*cancelled)
        await asyncio.wait(ended)
        left = supervisor.running
        await supervisor.close()
        return len(left), len(supervisor.running), server in left

    assert asyncio.run(run()) == (1, 0, True)


def test_cancel_and_wait_returns_once_the_task_ended_and_keeps_the_callers_cancellation() -> None:
    async def run() -> tuple[bool, bool]:
        unwound = asyncio.Event()

        async def work() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.sleep(0)  # unwinding takes a step of the loop
                unwound.set()

        task = asyncio.create_task(work())
        await asyncio.sleep(0)
        await cancel_and_wait(task, None)
        done_at_return = task.done() and unwound.is_set()

        # The caller is cancelled while it waits: its cancellation is not swallowed.
        let_go = asyncio.Event()

        async def slow_to_stop() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await let_go.wait()

        slow = asyncio.create_task(slow_to_stop())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(cancel_and_wait(slow))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        let_go.set()
        await slow
        return done_at_return, waiter.cancelled()

    assert asyncio.run(run()) == (True, True)


# --- the coordinator supervises its tasks ------------------------------------------------


def test_a_crashing_control_loop_ends_the_coordinator_non_zero(caplog: pytest.LogCaptureFixture) -> None:
    coordinator = run_coordinator(
        "127.0.0.1", 0, 0, 0, 1.0, 10.0, None, fault=CRASH_CONTROL_LOOP, security=SecurityConfig()
    )
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(asyncio.wait_for(coordinator, 120)) == 1
    crashes = [r for r in caplog.records if r.getMessage() == "control loop crashed; the process stops"]
    assert crashes and crashes[0].exc_info is not None


def test_an_unknown_fault_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="fault"):
        asyncio.run(run_coordinator("127.0.0.1", 0, 0, 0, 1.0, 10.0, None, fault="nope", security=SecurityConfig()))


# --- the worker waits for the work it cancels --------------------------------------------


def _assignment() -> commands.AssignWorker:
    spec = parse_job_spec({"model": {"name": "mlp", "args": {"hidden": [4]}}, "num_workers": 1})
    job = Job("job-1", spec, job_layout(spec), created_at=0.0, membership_epoch=1, worker_ids=["worker-0"])
    return commands.AssignWorker("worker-0", job, 0, shard_addresses=("127.0.0.1:1",))


def test_worker_release_returns_only_once_the_cancelled_work_ended() -> None:
    async def run() -> list[bool]:
        session = MemberSession("127.0.0.1:1", common_pb.ROLE_WORKER, SecurityConfig())
        settings = ServiceSettings(SecurityConfig(), shared_memory=False)
        node = WorkerNode(session, 1.0, WorkerMetrics(CollectorRegistry()), settings)
        before = asyncio.all_tasks()
        await node.on_command(_assignment())
        work = asyncio.all_tasks() - before
        await node.release()
        ended = [task.done() for task in work]
        await session.close()
        return ended

    assert asyncio.run(run()) == [True]


# --- a coordinator session closes even when handling a message failed ----------------------


class _FailingControl(Control):
    """The real control, whose message handling fails as a bug in it would."""

    async def handle(self, member_id: str, event: Event) -> None:
        if isinstance(event, WorkerProgressReport):
            raise RuntimeError("handling failed")
        await super().handle(member_id, event)


async def _requests(member_id: str) -> AsyncIterator[coord_pb.SessionRequest]:
    yield coord_pb.SessionRequest(open=coord_pb.SessionOpen(member_id=member_id))
    yield coord_pb.SessionRequest(worker_progress=coord_pb.WorkerProgress(job_id="job-1"))
    await asyncio.Event().wait()  # the member itself keeps the stream open


def test_a_failure_in_handle_still_closes_the_session_and_fails_the_member() -> None:
    async def run() -> tuple[grpc.StatusCode, MemberState]:
        control = _FailingControl(CoordinatorCounters(CollectorRegistry()), 1.0, 600.0)
        member, _ = control.register(Role.WORKER, "", "w")
        server, port = create_server("127.0.0.1:0", SecurityConfig())
        coord_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(control), server)
        await server.start()
        try:
            async with create_channel(f"127.0.0.1:{port}", SecurityConfig()) as channel:
                call = coord_grpc.CoordinatorStub(channel).Session(_requests(member.member_id))
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    async for _ in call:
                        pass
                return failed.value.code(), control.membership.get(member.member_id).state
        finally:
            await server.stop(None)

    code, state = asyncio.run(run())
    assert code == grpc.StatusCode.UNKNOWN
    # Failed at once, as for any closed session, not after a 600 s heartbeat timeout.
    assert state is MemberState.FAILED
