"""OpenTelemetry traces, off by default: set LLMMESH_OTLP_ENDPOINT (or the standard
OTEL_EXPORTER_OTLP_ENDPOINT) to export them over OTLP/gRPC.

A request's trace runs through the gateway, the gRPC calls it makes (W3C trace
context in gRPC metadata), generation in the backend, and, for jobs, the NATS publish
and the worker that consumes it (context in message headers), to the callback POST.

Spans come from `tracer()`, whose provider this module owns (no-op until configured),
so that tests can swap in an in-memory exporter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

_provider: trace.TracerProvider = trace.NoOpTracerProvider()
_propagator = TraceContextTextMapPropagator()


def configure_tracing(service: str, endpoint: str | None) -> None:
    """Export spans of `service` to the OTLP endpoint (ServiceSettings.otlp_endpoint), if one is set."""
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"llmmesh-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    use_provider(provider)
    log.info("tracing to %s", endpoint)


def use_provider(provider: trace.TracerProvider) -> trace.TracerProvider:
    """Make `provider` the source of spans; returns the previous one."""
    global _provider
    previous, _provider = _provider, provider
    return previous


def tracer() -> trace.Tracer:
    return _provider.get_tracer("llmmesh")


def enabled() -> bool:
    return not isinstance(_provider, trace.NoOpTracerProvider)


def inject() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier


def extract(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Context:
    """The trace context carried by gRPC metadata, NATS headers or a stored mapping."""
    carrier = dict(headers or ())
    return _propagator.extract({k.lower(): v for k, v in carrier.items()}, getter=DefaultGetter())


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
