"""Plans jobs in a child process, so that the coordinator never loads torch nor runs model code.

Planning builds the job's model on torch's meta device to learn its parameters' names, shapes
and dtype (core/plan.py `job_tensors`, held to the limits of core/model_size.py). torch alone
would keep ~270 MB resident in the coordinator for as long as it runs, and a user's factory
could hang it or take its memory. So a `Planner` keeps one child, `python -m
tidal.planner_child`, that imports torch once (seconds) and then plans one spec per line: the
spec JSON goes in on its stdin, one JSON line comes back on its stdout, the layout (tensor
names, shapes, dtype) or the error a bad spec causes, and the coordinator cuts the shard map
from the layout without torch. Plans run one at a time, each within `timeout_s`; the child has
an address-space cap of PLAN_MEMORY_BYTES. A child that times out, crashes, writes too much or
ran out of memory is killed and the next plan starts a fresh one; through tidal/spawn.py it
also dies with the coordinator.

A bad spec comes back as the same error, naming the field, as in-process planning gave; any
other failure is InternalError, a timeout UnavailableError, with the tail of the child's stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from tidal.core.errors import (
    InternalError,
    InvalidArgumentError,
    PermissionDeniedError,
    TidalError,
    UnavailableError,
)
from tidal.core.shard_map import ShardMap, TensorInfo, build_shard_map
from tidal.core.spec import JobSpec

# How long a plan may take, in seconds, the child's start included (importing torch takes
# seconds on a busy host) and the model's meta build.
PLAN_TIMEOUT_S = 60.0
# The child's address-space limit (RLIMIT_AS), in bytes. torch's import alone maps ~0.65 GB;
# the rest is for the data set's description (small data sets are loaded to describe them).
PLAN_MEMORY_BYTES = 4 << 30
# The longest answer line read: a layout holds at most MAX_MODEL_TENSORS entries.
MAX_LAYOUT_BYTES = 16 << 20
# How much of the child's stderr a failure quotes.
STDERR_TAIL_BYTES = 2048
# Codes in the child's answer for the errors a spec can cause.
EXIT_CODES: dict[type[TidalError], int] = {InvalidArgumentError: 3, PermissionDeniedError: 4}
_ERRORS = {code: error for error, code in EXIT_CODES.items()}
_READ_BYTES = 1 << 16


class Planner:
    """One planner child, started at the first plan (or by `start`), reused until it fails."""

    def __init__(
        self,
        *,
        timeout_s: float = PLAN_TIMEOUT_S,
        memory_bytes: int = PLAN_MEMORY_BYTES,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        # None: the child inherits this process's environment.
        self._env = None if env is None else dict(env)
        self._process: asyncio.subprocess.Process | None = None
        self._stderr: _Tail | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Planner:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def pid(self) -> int | None:
        """The running child's process id, if one runs."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> None:
        """Starts the child now, so the first submit does not wait for torch's import."""
        async with self._lock:
            await self._ensure_child()

    async def plan(self, spec: JobSpec) -> ShardMap:
        """The job's shard map. Raises InvalidArgumentError or PermissionDeniedError for a bad
        spec, UnavailableError when the plan takes longer than `timeout_s`, InternalError when
        the child fails otherwise."""
        async with self._lock:
            answer = await self._ask(spec)
        if "error" in answer:
            raise _ERRORS.get(answer["error"], InternalError)(str(answer.get("message", "")))
        return build_shard_map(_layout(answer.get("layout")), spec.num_shards)

    async def _ask(self, spec: JobSpec) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout_s):
                process = await self._ensure_child()
                assert process.stdin is not None and process.stdout is not None  # started with pipes
                process.stdin.write(spec.to_json().encode() + b"\n")
                await process.stdin.drain()
                line = await process.stdout.readline()
        except TimeoutError:
            tail = await self.aclose()
            raise UnavailableError(
                f"planning the job took longer than {self.timeout_s:g}s; the planner was stopped: {tail}"
            ) from None
        except ValueError:  # the line is longer than the stream's limit
            await self.aclose()
            raise InternalError(
                f"planning job {spec.name!r}: the planner wrote more than {MAX_LAYOUT_BYTES} bytes"
            ) from None
        except (ConnectionError, BrokenPipeError):
            line = b""
        except BaseException:  # cancelled: the plan is abandoned, its child with it
            await self.aclose()
            raise
        if not line:
            code = await self._wait_ended()
            tail = await self.aclose()
            raise InternalError(f"planning job {spec.name!r}: the planner {_ended(code)}: {tail}")
        answer = _answer(line)
        if answer.get("restart"):  # it ran out of memory: what it holds may never come back
            await self.aclose()
        return answer

    async def _ensure_child(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process
        child = [sys.executable, "-m", "tidal.planner_child", str(self.memory_bytes)]
        self._process = await asyncio.create_subprocess_exec(
            # Behind tidal.spawn, which ties the child's life to this process (SIGKILL when it dies).
            *[sys.executable, "-m", "tidal.spawn", str(os.getpid()), "--", *child],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            limit=MAX_LAYOUT_BYTES,
        )
        assert self._process.stderr is not None
        self._stderr = _Tail(STDERR_TAIL_BYTES)
        self._stderr_task = asyncio.create_task(self._stderr.read(self._process.stderr))
        return self._process

    async def _wait_ended(self) -> int:
        assert self._process is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                return await self._process.wait()
        return -int(signal.SIGKILL)

    def kill(self) -> None:
        """Kills the child, if one runs, without waiting for it: for shutdown paths that cannot
        await. `aclose` kills it too and waits until it ended."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def aclose(self) -> str:
        """Kills the child (`kill`) and waits until it ended; the tail of its stderr. The next
        plan starts a fresh child."""
        self.kill()
        process, self._process = self._process, None
        if process is not None:
            await process.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._stderr_task
            self._stderr_task.cancel()
        return _tail(self._stderr.data if self._stderr else b"")


async def plan_job(
    spec: JobSpec,
    *,
    timeout_s: float = PLAN_TIMEOUT_S,
    memory_bytes: int = PLAN_MEMORY_BYTES,
    env: Mapping[str, str] | None = None,
) -> ShardMap:
    """One plan in a child of its own (see `Planner`)."""
    async with Planner(timeout_s=timeout_s, memory_bytes=memory_bytes, env=env) as planner:
        return await planner.plan(spec)


def _answer(line: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(line)
    except ValueError as exc:
        raise InternalError(f"planner: malformed answer ({exc})") from None
    if not isinstance(answer, dict):
        raise InternalError("planner: malformed answer (not an object)")
    return answer


def _layout(data: Any) -> tuple[TensorInfo, ...]:
    return layout_from_json(json.dumps(data))


class _Tail:
    """The last `keep` bytes of a stream, read to its end."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.data = b""

    async def read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_READ_BYTES):
            self.data = (self.data + chunk)[-self.keep :]


def _ended(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _tail(stderr: bytes) -> str:
    text = stderr.decode(errors="replace").strip()
    return text.replace("\n", " | ") if text else "(no output)"


# --- the layout on the child's stdout ---------------------------------------------------------
def layout_to_json(tensors: tuple[TensorInfo, ...]) -> str:
    return json.dumps({"tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in tensors]})


def layout_from_json(text: bytes | str) -> tuple[TensorInfo, ...]:
    """The tensors of a layout the child wrote; InternalError if it is malformed (a bug, or a
    factory that wrote to the child's stdout descriptor itself)."""
    try:
        data = json.loads(text)
        return tuple(_tensor(t) for t in data["tensors"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InternalError(f"planner: malformed layout ({type(exc).__name__}: {exc})") from None


def _tensor(data: Any) -> TensorInfo:
    name, shape, dtype = data["name"], data["shape"], data["dtype"]
    dims_ok = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    if not isinstance(name, str) or not isinstance(dtype, str) or not dims_ok:
        raise ValueError(f"tensor entry {data!r}")
    return TensorInfo(name, tuple(shape), dtype)
