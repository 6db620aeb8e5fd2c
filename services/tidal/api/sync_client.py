"""The blocking client for scripts and notebooks: `connect(address).submit(spec).result()`.

It wraps the async `TidalClient` (tidal/client.py, still the API for async code) running on
a private event loop (loop.py), and speaks plain dataclasses with string states (status.py).
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tidal.api.loop import BackgroundLoop
from tidal.api.spec import spec_payload
from tidal.api.status import JobResult, JobStatus
from tidal.client import TidalClient
from tidal.config import DEFAULT_COORDINATOR
from tidal.core.errors import DeadlineExceededError, FailedPreconditionError, InvalidArgumentError, TidalError
from tidal.core.spec import JobSpec as CoreJobSpec
from tidal.transport.tls import SecurityConfig, require_secure

ProgressCallback = Callable[[JobStatus], object]


class JobFailedError(FailedPreconditionError):
    """`Job.result()` of a job that ended failed or cancelled; `.result` holds what it reached."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(f"job {result.job_id} ({result.name}) {result.state}: {result.message or 'no message'}")
        self.result = result


class _End:
    """Marks the end of a watch stream in the hand-over queue."""


class Job:
    """A submitted job. It keeps running on the cluster whatever happens to this object."""

    def __init__(self, client: Client, job_id: str) -> None:
        self._client = client
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"Job({self.job_id!r})"

    def status(self) -> JobStatus:
        return JobStatus.from_proto(self._client.loop.run(self._client.aio.get(self.job_id)))

    def cancel(self) -> JobStatus:
        return JobStatus.from_proto(self._client.loop.run(self._client.aio.cancel(self.job_id)))

    def __iter__(self) -> Iterator[JobStatus]:
        return self.watch()

    def watch(self, timeout_s: float | None = None) -> Iterator[JobStatus]:
        """Yields the job's status on every change, the last one terminal. Raises
        DeadlineExceededError once `timeout_s` passed without the job ending."""
        updates: queue.Queue[JobStatus | _End | BaseException] = queue.Queue()
        future = self._client.loop.submit(self._pump(updates))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                try:
                    item = updates.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise DeadlineExceededError(
                        f"job {self.job_id} did not end within {timeout_s:g}s; it keeps running"
                    ) from None
                if isinstance(item, _End):
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()

    async def _pump(self, updates: queue.Queue[JobStatus | _End | BaseException]) -> None:
        try:
            async for status in self._client.aio.watch(self.job_id):
                updates.put(JobStatus.from_proto(status))
        except Exception as exc:  # noqa: BLE001  # any failure goes to the caller's thread, raised there
            updates.put(exc)
        else:
            updates.put(_End())

    def wait(
        self,
        progress: ProgressCallback | None = None,
        timeout_s: float | None = None,
        cancel_on_interrupt: bool = False,
    ) -> JobResult:
        """Blocks until the job ends and returns its result, whatever the end state;
        `progress` is called with every status update. Ctrl-C (KeyboardInterrupt) stops the
        waiting, not the job: the re-raised KeyboardInterrupt says that it keeps running, or,
        with `cancel_on_interrupt`, cancels it first and says so."""
        try:
            with contextlib.closing(self.watch(timeout_s)) as updates:
                for status in updates:
                    if progress is not None:
                        progress(status)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(self._interrupted(cancel_on_interrupt)) from None
        return JobResult.from_proto(self._client.loop.run(self._client.aio.get(self.job_id)))

    def _interrupted(self, cancel: bool) -> str:
        if cancel:
            try:
                state = self.cancel().state
            except TidalError as exc:  # e.g. it ended meanwhile, or the coordinator is gone
                return f"interrupted: job {self.job_id} not cancelled: {exc}"
            return f"interrupted: job {self.job_id} cancelled (now {state})"
        return (
            f"interrupted: stopped waiting, job {self.job_id} keeps running on the cluster "
            f"(job.cancel() or `tidal cancel {self.job_id}` stops it)"
        )

    def result(self, timeout_s: float | None = None, cancel_on_interrupt: bool = False) -> JobResult:
        """Waits like `wait` and returns the result of a job that succeeded; raises
        JobFailedError (holding the result) for one that failed or was cancelled."""
        result = self.wait(timeout_s=timeout_s, cancel_on_interrupt=cancel_on_interrupt)
        if not result.succeeded:
            raise JobFailedError(result)
        return result


class Client:
    """A coordinator's job API, blocking. Use it as a context manager, or call `close()`."""

    def __init__(self, address: str, security: SecurityConfig, timeout_s: float = 30.0) -> None:
        self.address = address
        self._closed = False
        self.loop = BackgroundLoop()
        # The gRPC channel belongs to the loop it is made on: make it there.
        self.aio: TidalClient = self.loop.run(_make_client(address, security, timeout_s))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.run(self.aio.close())
        finally:
            self.loop.close()

    def submit(self, spec: CoreJobSpec | Mapping[str, Any]) -> Job:
        """Submits a job (a JobSpec, or a mapping shaped like a YAML spec), validated here first."""
        status = self.loop.run(self.aio.submit(spec_payload(spec)))
        return Job(self, status.job_id)

    def job(self, job_id: str) -> Job:
        """A handle on a job submitted before (NotFoundError on first use if there is none)."""
        if not job_id:
            raise InvalidArgumentError("job_id: must not be empty")
        return Job(self, job_id)

    def jobs(self) -> list[JobStatus]:
        return [JobStatus.from_proto(s) for s in self.loop.run(self.aio.list())]


async def _make_client(address: str, security: SecurityConfig, timeout_s: float) -> TidalClient:
    return TidalClient(address, security=security, timeout_s=timeout_s)


def security_from_env(environ: Mapping[str, str] | None = None, name: str = "admin") -> SecurityConfig:
    """A client's security as the CLI builds it: TIDAL_TLS_* and TIDAL_TOKEN* (docs/security.md),
    or plaintext when TIDAL_ALLOW_PLAINTEXT=1; neither set is refused with what to set."""
    config = SecurityConfig.from_env(os.environ if environ is None else environ, default_name=name)
    require_secure(config, "tidal.connect", server=False)
    return config


def connect(
    address: str = DEFAULT_COORDINATOR, security: SecurityConfig | None = None, timeout_s: float = 30.0
) -> Client:
    """A blocking client of the coordinator at `address`; `security` defaults to `security_from_env()`.
    `timeout_s` bounds each call (not `Job.wait`)."""
    if not address:
        raise InvalidArgumentError("address: must be host:port, got an empty string")
    return Client(address, security if security is not None else security_from_env(), timeout_s)
