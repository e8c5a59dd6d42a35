"""x-request-id: honoured or made up, sent back, and on the log lines of every service touched."""

from __future__ import annotations

import logging
import time

import httpx
import pytest


async def test_a_callers_request_id_reaches_the_logs_of_every_service(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
    response = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": "trace-abc-123"})
    assert response.headers["x-request-id"] == "trace-abc-123"
    assert float(response.headers["x-overhead-ms"]) >= 0
    touched = {record.name.split(".")[1] for record in caplog.records if record.request_id == "trace-abc-123"}
    assert {"gateway", "inference"} <= touched
    assert "hi" not in " ".join(r.getMessage() for r in caplog.records if r.request_id == "trace-abc-123")


async def test_a_request_id_is_made_up_when_missing_or_unsafe(http: httpx.AsyncClient) -> None:
    for headers in ({}, {"x-request-id": "bad id with spaces and {braces}"}, {"x-request-id": "x" * 500}):
        response = await http.get("/v1/models", headers=headers)
        assert response.headers["x-request-id"].startswith("req-")


async def test_a_streams_overhead_leaves_out_the_wait_for_its_first_token(http: httpx.AsyncClient) -> None:
    """x-overhead-ms of a stream is taken at its first event: the 50 ms mock-slow sleeps before its
    first token are inference's time, not the gateway's (they were counted until the span closed
    only at the stream's end)."""
    body = {"model": "mock-slow", "stream": True, "messages": [{"role": "user", "content": "one two"}]}
    await http.post("/v1/chat/completions", json=body | {"stream": False})  # loaded: no "loading" event first
    started = time.perf_counter()
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        elapsed_ms = (time.perf_counter() - started) * 1000  # the client's wait for the headers
        overhead_ms = float(response.headers["x-overhead-ms"])
        await response.aread()
    assert 0 <= overhead_ms <= elapsed_ms - 50
