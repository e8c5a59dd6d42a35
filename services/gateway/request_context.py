"""Per-request context at the gateway: the request id, and what the gateway itself adds to a
request: its total time minus the time spent waiting
for upstream services, returned as `x-overhead-ms` (as LiteLLM does) and observed in
`llmmesh:gateway_overhead_seconds`. For a stream it is measured when the response starts,
after the first upstream chunk arrived."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from opentelemetry.trace import SpanKind
from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import tracing
from services.common.grpc_client import CALL_SPAN
from services.common.logs import REQUEST_ID, REQUEST_ID_HEADER, request_id_from
from services.common.metrics import FAST_BUCKETS, PREFIX
from services.gateway.analytics import MetricsHistory, outcome

log = logging.getLogger(__name__)

OVERHEAD = Histogram(
    f"{PREFIX}gateway_overhead_seconds", "Time the gateway adds to a request.", ("route",), buckets=FAST_BUCKETS
)


@dataclass
class RequestStats:
    """This gateway's request counts, for /metrics/summary."""

    started_at: float = field(default_factory=time.time)
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    active: int = 0
    peak_active: int = 0

    def began(self) -> None:
        self.total += 1
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)

    def ended(self, status: int) -> None:
        self.active -= 1
        match outcome(status):
            case "succeeded":
                self.succeeded += 1
            case "failed":
                self.failed += 1
            case "cancelled":
                self.cancelled += 1


class RequestContextMiddleware:
    """Per request: its id (the caller's `x-request-id`, or a new one), sent back and carried
    to every service it reaches; the gateway's overhead; one access log line."""

    def __init__(self, app: ASGIApp, stats: RequestStats, history: MetricsHistory) -> None:
        self.app = app
        self.stats = stats
        self.history = history

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(("/metrics", "/health")):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        incoming = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers.items()]
        with tracing.tracer().start_as_current_span(
            f"{scope['method']} {scope['path']}", context=tracing.extract(incoming), kind=SpanKind.SERVER
        ):
            given = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
            # Without a caller's id, the trace id (when tracing) ties logs and traces together.
            await self._serve(scope, receive, send, request_id_from(given or tracing.current_trace_id()))

    async def _serve(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started, span, status = time.perf_counter(), list[float](), [0]
        first_byte: list[float] = []  # a stream's: its response starts with its first event
        tokens = (CALL_SPAN.set(span), REQUEST_ID.set(request_id))
        self.stats.began()

        async def send_with_context(message: Message) -> None:
            if message["type"] == "http.response.start":
                upstream = span[1] - span[0] if span else 0.0
                overhead = max(time.perf_counter() - started - upstream, 0.0)
                route = scope.get("route")
                OVERHEAD.labels(getattr(route, "path", "unmatched")).observe(overhead)
                status[0] = message["status"]
                if any(
                    k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message.get("headers", ())
                ):
                    first_byte.append(time.perf_counter() - started)
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (b"x-overhead-ms", f"{overhead * 1000:.2f}".encode()),
                        (REQUEST_ID_HEADER.encode(), request_id.encode()),
                    ],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        finally:
            self.stats.ended(status[0])
            if self.history.counts(scope["path"]):
                owner = scope.get("state", {}).get("owner", "")  # set by auth once it knows the caller
                self.history.request_ended(
                    scope["method"], scope["path"], status[0], first_byte[0] if first_byte else None, request_id, owner
                )
            log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status[0],
                extra={"duration_ms": round((time.perf_counter() - started) * 1000, 2)},
            )
            CALL_SPAN.reset(tokens[0])
            REQUEST_ID.reset(tokens[1])
