"""One trace per job, from the gateway through the scheduler, NATS and the worker to inference
and the callback, collected with an in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing
from tests.conftest import serve_http


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(previous)


async def test_a_job_is_one_trace_across_the_mesh(gateway_url: str, spans: InMemorySpanExporter) -> None:
    called = asyncio.Event()
    receiver = FastAPI()

    @receiver.post("/hook")
    async def hook(request: Request) -> dict[str, bool]:
        assert request.headers["traceparent"]  # the receiver may continue the trace
        called.set()
        return {"ok": True}

    server, task, receiver_url = await serve_http(receiver)
    try:
        async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
            body = {
                "job_type": "chat",
                "request": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                "callback_url": f"{receiver_url}/hook",
            }
            accepted = await http.post("/internal/queue/enqueue", json=body)
            assert accepted.status_code == 202, accepted.text
            trace_id = accepted.headers["x-request-id"]  # without a caller's id, the request id is the trace id
            async with http.stream("GET", f"/v1/jobs/{accepted.json()['id']}/events") as events:
                async for _ in events.aiter_lines():
                    pass
        async with asyncio.timeout(30):
            await called.wait()
    finally:
        server.should_exit = True
        await task

    async with asyncio.timeout(10):  # the callback span ends just after the receiver answered
        while not any(s.name == "job callback" for s in spans.get_finished_spans()):
            await asyncio.sleep(0.02)
    in_trace = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    names = {s.name for s in in_trace}
    assert "POST /internal/queue/enqueue" in names  # gateway
    assert "/llmmesh.scheduler.v1.SchedulerService/SubmitJob" in names  # scheduler
    assert any(n.startswith("publish jobs.") for n in names)  # NATS publish
    assert "job chat" in names  # worker (consumer)
    assert "/llmmesh.inference.v1.InferenceService/ChatStream" in names and "generate" in names  # inference
    assert "job callback" in names
