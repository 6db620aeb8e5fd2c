"""The server-side gate every tidal RPC passes: decodable input, then who is calling.

`GuardInterceptor` wraps each handler:
1. the request deserializer: bytes that do not parse as the method's protobuf become an
   `Undecodable` marker, answered INVALID_ARGUMENT naming the message type (grpc-python
   would otherwise answer INTERNAL or UNKNOWN);
2. authentication (when the process's SecurityConfig asks for it): a bearer token from the
   `authorization` metadata, else the role and name in the verified client certificate;
3. authorization: core/authz.py decides; UNAUTHENTICATED or PERMISSION_DENIED otherwise.

The caller's `Principal` is then available to servicers through `current_principal()`
(a context variable set for the duration of the call), so field-level checks (a worker
may only speak for its own member id) stay one line in the servicer.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from tidal.core import authz
from tidal.core.authz import AuthRole, Decision, Outcome, Principal
from tidal.core.errors import PermissionDeniedError
from tidal.security.certs import identity_from_pem
from tidal.transport.tls import SecurityConfig

log = logging.getLogger(__name__)

_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("tidal_principal", default=None)
STATUS_FOR_OUTCOME = {
    Outcome.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Outcome.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


def current_principal() -> Principal | None:
    """Who is calling the RPC being handled (None when authentication is off)."""
    return _PRINCIPAL.get()


def require(decision: Decision) -> None:
    """Raises PermissionDeniedError for a denied field-level decision (servicers)."""
    if not decision.allowed:
        raise PermissionDeniedError(decision.reason)


def require_member(member_id: str, field: str) -> None:
    """The caller may speak for `member_id` (no-op when authentication is off)."""
    if (principal := current_principal()) is not None:
        require(authz.check_member(principal, member_id, field))


def identity_for_registration() -> str:
    """The identity new member ids are bound to ("" when authentication is off)."""
    principal = current_principal()
    return principal.identity if principal is not None else ""


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes did not parse."""

    type_name: str
    error: str


def _guard_deserializer(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = descriptor.full_name if descriptor is not None else f"request of {method}"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, RuntimeError, TypeError, OverflowError) as exc:  # what the parser raises
            return Undecodable(name, f"{type(exc).__name__}: {exc}"[:200])

    return deserialize


def authenticate(config: SecurityConfig, metadata: Any, auth_context: dict[str, list[bytes]]) -> Decision | Principal:
    """The caller's principal, or why it has none. A token, when sent, must be valid."""
    header = next((v for k, v in (metadata or ()) if k == "authorization"), None)
    if header is not None:
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token:
            return Decision(Outcome.UNAUTHENTICATED, "authorization: expected 'Bearer <token>'")
        principal = config.tokens.lookup(token.strip()) if config.tokens is not None else None
        if principal is None:
            return Decision(Outcome.UNAUTHENTICATED, "authorization: the bearer token is not valid here")
        return principal
    for pem in auth_context.get("x509_pem_cert", []):
        if (named := identity_from_pem(bytes(pem))) is not None:
            return Principal(AuthRole(named[0]), named[1], "certificate")
        return Decision(
            Outcome.UNAUTHENTICATED, "certificate: names no tidal role (URI SAN tidal://role/<role>/<name>)"
        )
    return Decision(Outcome.UNAUTHENTICATED, "credentials: a bearer token or a client certificate is required")


class GuardInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, config: SecurityConfig) -> None:
        self._config = config

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        deserializer = _guard_deserializer(handler.request_deserializer, method)
        serializer = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method), deserializer, serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(handler.unary_stream, method), deserializer, serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(handler.stream_unary, method), deserializer, serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream_stream(handler.stream_stream, method), deserializer, serializer
        )

    async def _admit(self, method: str, context: grpc.aio.ServicerContext) -> Principal | None:
        """Authenticates and authorizes the call, or aborts it."""
        if not self._config.auth_required or method in authz.PUBLIC_METHODS:
            return None
        found = authenticate(self._config, context.invocation_metadata(), context.auth_context())
        principal, decision = (found, authz.authorize(found, method)) if isinstance(found, Principal) else (None, found)
        if not decision.allowed:
            log.info("refused %s from %s: %s", method, context.peer(), decision.reason)
            await context.abort(STATUS_FOR_OUTCOME[decision.outcome], decision.reason)
        return principal

    @staticmethod
    async def _decoded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {request.type_name}: {request.error}"
            )
        return request

    def _requests(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                yield await self._decoded(request, context)

        return checked()

    def _unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _PRINCIPAL.set(await self._admit(method, context))
            return await behavior(await self._decoded(request, context), context)

        return wrapped

    def _unary_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _PRINCIPAL.set(await self._admit(method, context))
            async for response in behavior(await self._decoded(request, context), context):
                yield response

        return wrapped

    def _stream_unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapped(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            _PRINCIPAL.set(await self._admit(method, context))
            return await behavior(self._requests(requests, context), context)

        return wrapped

    def _stream_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapped(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _PRINCIPAL.set(await self._admit(method, context))
            async for response in behavior(self._requests(requests, context), context):
                yield response

        return wrapped


class BearerTokenInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Client side: adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)
