"""x-request-id: honoured or made up, sent back, and on the log lines of every service touched."""

from __future__ import annotations

import logging

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
