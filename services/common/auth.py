"""The internal token between services: every RPC of every service carries it in the
`x-internal-token` metadata, checked by one server interceptor (health and reflection are
exempt, so that probes and grpcurl's discovery work); clients inside the mesh add it with
one client interceptor."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.common import tracing
from services.common.logs import REQUEST_ID, REQUEST_ID_HEADER

INTERNAL_TOKEN_METADATA = "x-internal-token"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class InternalTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the internal token must not be empty")
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.startswith(EXEMPT_PREFIXES) or self._carries_token(handler_call_details):
            return await continuation(handler_call_details)
        return _unauthenticated(await continuation(handler_call_details))

    def _carries_token(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == INTERNAL_TOKEN_METADATA:
                presented = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(presented, self._token)
        return False


def _unauthenticated(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """A handler of the same shape that refuses the call."""
    if handler is None:
        return None
    message = f"Missing or wrong {INTERNAL_TOKEN_METADATA} metadata."

    async def refuse_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_stream:
        return handler._replace(unary_stream=refuse_stream)
    return handler._replace(unary_unary=refuse_unary)


def with_internal_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    """The call's metadata plus the internal token, and the request id being served, if any."""
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add(INTERNAL_TOKEN_METADATA, token)
    if request_id := REQUEST_ID.get():
        metadata.add(REQUEST_ID_HEADER, request_id)
    for key, value in tracing.inject().items():  # W3C trace context: the callee's spans join this trace
        metadata.add(key, value)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files an interceptor under one call type only, hence one class per type.
class _UnaryUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(with_internal_token(client_call_details, self._token), request)


class _UnaryStreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(with_internal_token(client_call_details, self._token), request)


def internal_token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that add the internal token to every call of a channel."""
    return [_UnaryUnaryToken(token), _UnaryStreamToken(token)]
