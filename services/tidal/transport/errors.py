"""The one mapping from domain errors to gRPC status codes.

Servicer methods are wrapped with `translate_errors`: a `TidalError` raised by the domain
ends the call with the matching status and the error's message; anything else is a bug
and surfaces as INTERNAL with the exception logged.
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
}

# The reverse, for clients that turn a status back into a domain error.
ERROR_FOR_STATUS: dict[grpc.StatusCode, type[errors.TidalError]] = {v: k for k, v in STATUS_FOR_ERROR.items()}


def status_for(exc: errors.TidalError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR_ERROR:
            return STATUS_FOR_ERROR[cls]
    return grpc.StatusCode.UNKNOWN


def error_from_rpc(exc: grpc.aio.AioRpcError | grpc.RpcError) -> errors.TidalError:
    """Turns a failed call into the domain error it stands for (UNAVAILABLE by default)."""
    return error_for_status(exc.code(), exc.details())


def error_for_status(code: grpc.StatusCode, details: str | None) -> errors.TidalError:
    """The domain error a call that ended with `code` stands for (UNAVAILABLE by default)."""
    cls = ERROR_FOR_STATUS.get(code, errors.UnavailableError)
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
