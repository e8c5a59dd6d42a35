"""gRPC channels and clients from one service to another.

Each service's typed client (`services/<name>/client.py`) derives from `ServiceClient`:
domain types in and out, every gRPC error turned back into the `MeshError` the service
raised (here and nowhere else), one channel per target with keepalive and reconnect
backoff, and one deadline for its calls.

Targets may name several replicas: `dns:///inference-headless:50051` (every address
the name resolves to, re-resolved as pods come and go) or
`ipv4:10.0.0.1:50051,10.0.0.2:50051`. Calls are spread over them round-robin,
client-side, since one HTTP/2 connection behind a Kubernetes Service would pin
every call to one pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmmesh.process.v1 import process_service_pb2 as process_pb2
from llmmesh.process.v1 import process_service_pb2_grpc as process_pb2_grpc
from services.common.auth import internal_token_interceptors
from services.common.errors import from_rpc_error
from services.common.grpc_server import MAX_MESSAGE_BYTES
from services.common.process_service import ProcessStats

T = TypeVar("T")

# [first call started, last one ended] of the calls made on behalf of one request, when its
# handler sets a list here (the gateway's overhead: its time minus this span).
CALL_SPAN: ContextVar[list[float] | None] = ContextVar("upstream_call_span", default=None)

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    # A peer that vanished without closing its connection (a killed pod, a cut network) is found
    # by pings within seconds, not at the call's deadline.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # A restarted service is dialled again within seconds; gRPC's default backoff grows to 120 s,
    # and calls fail fast (UNAVAILABLE, so 503 with Retry-After) until the channel reconnects.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 3_000),
]


def open_channel(target: str, internal_token: str | None) -> grpc.aio.Channel:
    """A channel that connects lazily, reconnects on its own, and sends the internal token."""
    interceptors = internal_token_interceptors(internal_token) if internal_token else []
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)


@contextlib.contextmanager
def upstream_wait() -> Iterator[None]:
    """Times a wait on another service into CALL_SPAN, when the request being served keeps one."""
    span, started = CALL_SPAN.get(), time.perf_counter()
    try:
        yield
    finally:
        if span is not None:
            ended = time.perf_counter()
            if span:
                span[0], span[1] = min(span[0], started), max(span[1], ended)
            else:
                span.extend((started, ended))


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """gRPC errors as the MeshError the service raised; the call is timed into CALL_SPAN."""
    with upstream_wait():
        try:
            yield
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None


class ServiceClient:
    """What every typed client has: the channel's health check and the calls' deadline."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._health = health_pb2_grpc.HealthStub(channel)
        self._process = process_pb2_grpc.ProcessServiceStub(channel)
        self._timeout = timeout

    async def process_stats(self, timeout: float) -> ProcessStats:
        """The service process's memory and CPU (ProcessService)."""
        with rpc_errors():
            return ProcessStats.from_pb(await self._process.GetStats(process_pb2.GetStatsRequest(), timeout=timeout))

    async def watch_logs(self, tail: int) -> AsyncIterator[str]:
        """The service's last `tail` log lines (JSON), then each new one until the reader stops."""
        call = self._process.WatchLogs(process_pb2.WatchLogsRequest(tail=tail))
        return await server_stream(call, lambda response: response.line)

    async def health(self, timeout: float) -> str:
        """The service's overall grpc.health.v1 status name, or UNREACHABLE."""
        try:
            response = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def server_stream(call: grpc.aio.UnaryStreamCall, pick: Callable[[Any], T]) -> AsyncIterator[T]:
    """A server stream's items (picked from each response); the call is cancelled when the reader
    stops. Errors before the first item raise here, so a caller can still answer with a status."""

    async def items() -> AsyncIterator[T]:
        try:
            async for response in call:
                yield pick(response)
        finally:
            call.cancel()

    stream = items()
    with rpc_errors():
        first = await anext(stream)
    return prepend(first, stream)


async def opened(stream: AsyncGenerator[T]) -> AsyncIterator[T]:
    """`stream` with its first item in hand: errors before it raise here (and close the stream),
    so that a caller can still answer with a status. The wait for it is the upstream's time (a
    stream's own rpc_errors closes its span only when the stream ends)."""
    try:
        with upstream_wait():
            first = await anext(stream)
    except BaseException:
        await stream.aclose()
        raise
    return prepend(first, stream)


async def prepend(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    """`first`, then the rest of a stream, whose errors become MeshErrors."""
    async with contextlib.aclosing(rest):  # type: ignore[type-var]
        yield first
        with rpc_errors():
            async for item in rest:
                yield item


async def open_merged(streams: list[AsyncGenerator[T]]) -> AsyncIterator[T]:
    """The streams interleaved, opened: errors before the first item raise here."""
    return await opened(merge(streams))


async def merge(streams: list[AsyncGenerator[T]]) -> AsyncGenerator[T]:
    """Interleave the streams' items as they arrive. Leaving early closes every stream, which is
    how a client disconnect reaches the server; the first error ends them all."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]):  # type: ignore[type-var]
            async for item in streams[0]:
                yield item
        return
    queue: asyncio.Queue[T | BaseException | None] = asyncio.Queue()

    async def pump(stream: AsyncGenerator[T]) -> None:
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for item in stream:
                    await queue.put(item)
            await queue.put(None)
        except Exception as error:  # handed to the reader, who raises it
            await queue.put(error)

    pumps = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        remaining = len(streams)
        while remaining:
            got = await queue.get()
            if got is None:
                remaining -= 1
            elif isinstance(got, BaseException):
                raise got
            else:
                yield got
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
