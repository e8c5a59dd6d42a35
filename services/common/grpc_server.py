"""gRPC server bootstrap shared by every service: errors, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from llmmesh.process.v1 import process_service_pb2_grpc as process_pb2_grpc
from services.common import tracing
from services.common.auth import EXEMPT_PREFIXES, InternalTokenInterceptor
from services.common.config import ServiceSettings
from services.common.errors import MeshError, to_status
from services.common.logs import REQUEST_ID, REQUEST_ID_HEADER, configure_logging, request_id_from
from services.common.metrics import serve_metrics
from services.common.process_service import SERVICE_NAME as PROCESS_SERVICE_NAME
from services.common.process_service import ProcessServicer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
    if isinstance(error, MeshError):
        log.info("%s failed: %s %s: %s", method, error.code.name, error.reason, error.message)
        await context.abort_with_status(to_status(error))
    log.exception("%s failed with an unexpected error", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "Internal error; see the service log.")


def _adopt_request_id(context: grpc.aio.ServicerContext) -> None:
    """The caller's x-request-id, for this call's log lines (and the calls it makes)."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER:
            REQUEST_ID.set(request_id_from(value if isinstance(value, str) else value.decode()))
            return
    REQUEST_ID.set("")


def _caller_trace(context: grpc.aio.ServicerContext) -> otel_context.Context:
    """The trace context the caller sent (W3C headers in the metadata)."""
    return tracing.extract([(k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str)])


def _call_span(method: str, context: grpc.aio.ServicerContext) -> contextlib.AbstractContextManager[Any]:
    """A server span for the call, child of the caller's trace (W3C context in the metadata)."""
    if method.startswith(EXEMPT_PREFIXES):  # probes and reflection: no spans
        return contextlib.nullcontext()
    return tracing.tracer().start_as_current_span(method, context=_caller_trace(context), kind=SpanKind.SERVER)


@contextlib.contextmanager
def _stream_span(method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
    """`_call_span` for a streaming handler: its context stays attached for the rest of the
    call's task (each RPC runs in a task of its own), because a generator closed from
    elsewhere cannot detach it."""
    if method.startswith(EXEMPT_PREFIXES):
        yield
        return
    span = tracing.tracer().start_span(method, context=_caller_trace(context), kind=SpanKind.SERVER)
    otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        span.end()


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions escaping any handler to a status: MeshError by its code, anything else INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                _adopt_request_id(context)
                try:
                    with _call_span(method, context):
                        return await behavior(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as error:  # noqa: BLE001 - the one place errors become statuses
                    await _abort(context, error, method)

            return handler._replace(unary_unary=unary_unary)

        if handler.unary_stream:
            stream_behavior = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                _adopt_request_id(context)
                try:
                    with _stream_span(method, context):
                        async for response in stream_behavior(request, context):
                            yield response
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as error:  # noqa: BLE001
                    await _abort(context, error, method)

            return handler._replace(unary_stream=unary_stream)

        return handler


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    health: HealthServicer
    port: int

    async def set_serving(self, names: Sequence[str], serving: bool) -> None:
        for name in names:
            await self.health.set(name, SERVING if serving else NOT_SERVING)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish for `grace` seconds, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(
    *,
    host: str,
    port: int,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    internal_token: str,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    serving: bool = True,
) -> GrpcServer:
    """Start a server with health and reflection. `port=0` binds an ephemeral port, returned in `.port`.

    Every RPC but health and reflection must carry `internal_token`. With `serving=False`
    health reports NOT_SERVING until the caller sets it (after warm-up).
    """
    server = grpc.aio.server(
        interceptors=[InternalTokenInterceptor(internal_token), *interceptors, ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Accept the clients' keepalive pings (services/common/grpc_client.py) during calls
            # instead of answering them with GOAWAY "too_many_pings".
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    register(server)
    process_pb2_grpc.add_ProcessServiceServicer_to_server(ProcessServicer(), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *service_names):
        await health.set(name, SERVING if serving else NOT_SERVING)
    reflection.enable_server_reflection(
        (
            *service_names,
            PROCESS_SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    bound_port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    log.info("gRPC server listening on %s:%d (%s)", host, bound_port, ", ".join(service_names))
    return GrpcServer(server=server, health=health, port=bound_port)


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


class GrpcService(Generic[SettingsT]):
    """Base of each service's server: owns the gRPC server once `start` has created it."""

    settings: SettingsT
    _grpc: GrpcServer | None = None
    _metrics: Any = None
    exit_code: int = 0  # the process's exit status once stopped (services/common/exit_codes.py)

    @property
    def metrics_port(self) -> int | None:
        return self._metrics.server_port if self._metrics is not None else None

    def serve_metrics(self) -> None:
        """Expose this process's Prometheus metrics on the configured port."""
        self._metrics = serve_metrics(self.settings.host, self.settings.metrics_port)

    @property
    def port(self) -> int:
        assert self._grpc, "server not started"
        return self._grpc.port

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (in-flight RPCs get `grace` seconds), then release what the service holds."""
        if self._grpc:
            await self._grpc.stop(self.settings.shutdown_grace_seconds if grace is None else grace)
        await self.release()
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()

    async def release(self) -> None:
        """Free models and other resources after the server stopped."""


async def wait_for_shutdown_signal() -> None:
    """Return on the first SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run_service(service: GrpcService[Any]) -> None:
    """A service process's main: serve until SIGINT/SIGTERM, then shut down gracefully; the
    process exits with the service's `exit_code` (0, or one of services/common/exit_codes.py)."""
    name = type(service).__name__.removesuffix("Server").lower()
    configure_logging(service.settings.log_level, name)
    tracing.configure_tracing(name, service.settings.otlp_endpoint)

    async def serve() -> None:
        await service.start()
        await wait_for_shutdown_signal()
        # A shutdown step that never returns (a cancellation lost inside a library's wait_for,
        # a peer that is gone) must not keep a process alive whose launcher died: past the grace
        # and a margin, the process ends anyway.
        deadline = service.settings.shutdown_grace_seconds + SHUTDOWN_MARGIN_SECONDS
        asyncio.get_running_loop().call_later(deadline, _exit_unfinished, name, deadline)
        await service.stop()

    asyncio.run(serve())
    if service.exit_code:
        sys.exit(service.exit_code)


SHUTDOWN_MARGIN_SECONDS = 20.0


def _exit_unfinished(name: str, deadline: float) -> None:
    log.error("%s: shutdown did not finish within %.0f s; exiting", name, deadline)
    logging.shutdown()
    os._exit(1)
