"""The one mapping from domain errors to gRPC status codes.

Servicer methods are wrapped with `translate_errors`: a `TidalError` raised by the domain
ends the call with the matching status and the error's message; anything else is a bug,
logged here, which grpc answers with UNKNOWN ("Unexpected <class ...>: message").

Clients turn a status back into a domain error (`error_from_rpc`). Only UnavailableError is
retried by the callers that reconnect (the worker's shard links): a bug on the other side
(INTERNAL, UNKNOWN, UNIMPLEMENTED) is an InternalError and fails the caller at once, with the
peer's message, instead of being retried until a restart timeout runs out.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from tidal.core import errors

log = logging.getLogger(__name__)

STATUS_FOR_ERROR: dict[type[errors.TidalError], grpc.StatusCode] = {
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DataLossError: grpc.StatusCode.DATA_LOSS,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}

# The reverse, for clients that turn a status back into a domain error, plus the statuses no
# tidal servicer sends itself. A peer that died or restarted shows as UNAVAILABLE ("Socket
# closed", "Connection reset by peer", "failed to connect", "Cancelling all calls" from a
# server that stops); CANCELLED, a stream the peer or this process cancelled, is a peer going
# away too: both are retried. UNKNOWN is grpc's answer to an exception a servicer did not
# handle and UNIMPLEMENTED a method the peer lacks: bugs or version skew, the same on a retry.
ERROR_FOR_STATUS: dict[grpc.StatusCode, type[errors.TidalError]] = {
    **{v: k for k, v in STATUS_FOR_ERROR.items()},
    grpc.StatusCode.CANCELLED: errors.UnavailableError,
    grpc.StatusCode.UNKNOWN: errors.InternalError,
    grpc.StatusCode.UNIMPLEMENTED: errors.InternalError,
}


def status_for(exc: errors.TidalError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR_ERROR:
            return STATUS_FOR_ERROR[cls]
    return grpc.StatusCode.UNKNOWN


def error_from_rpc(exc: grpc.aio.AioRpcError | grpc.RpcError) -> errors.TidalError:
    """Turns a failed call into the domain error it stands for (see `error_for_status`)."""
    return error_for_status(exc.code(), exc.details())


def error_for_status(code: grpc.StatusCode, details: str | None) -> errors.TidalError:
    """The domain error a call that ended with `code` stands for. A status outside the mapping
    (ABORTED, OUT_OF_RANGE: no tidal peer sends them) is an InternalError: not retried."""
    cls = ERROR_FOR_STATUS.get(code, errors.InternalError)
    return cls(details or code.name)


F = TypeVar("F", bound=Callable[..., Any])


def translate_errors(method: F) -> F:
    """Wraps a grpc.aio servicer method (coroutine or async generator)."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except errors.TidalError as exc:
                await context.abort(status_for(exc), str(exc))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                log.exception("%s failed", method.__qualname__)
                raise

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except errors.TidalError as exc:
            await context.abort(status_for(exc), str(exc))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("%s failed", method.__qualname__)
            raise

    return unary_wrapper  # type: ignore[return-value]
