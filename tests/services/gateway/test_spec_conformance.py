"""Every answer and stream event of every gateway operation, validated against the published
specifications (tests/specs): OpenAI's OpenAPI document, the Open Responses schemas for
/v1/responses, and Anthropic's Messages shapes from its API reference. Raw HTTP, so that what
is checked is what goes on the wire."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.conftest import GEMMA
from tests.specs import OPEN_RESPONSES, OPENAI, check_responses_event
from tests.specs import anthropic as anthropic_spec

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CHAT_TOOL = {"type": "function", "function": WEATHER}
RESPONSES_TOOL = {"type": "function", **WEATHER}


async def sse(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON payloads of a stream, in order (without the closing [DONE])."""
    events = []
    async with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line.removeprefix("data: ")))
    return events


CHAT_CASES = {
    "plain": {"model": "mock", "messages": [{"role": "user", "content": "hello there"}]},
    "cut": {"model": "mock", "messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 2},
    "choices": {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "n": 2},
    "logprobs": {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 3,
        "logprobs": True,
        "top_logprobs": 2,
    },
    "tool call": {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [CHAT_TOOL],
        "tool_choice": "required",
        "max_tokens": 48,
    },
}


@pytest.mark.parametrize("case", CHAT_CASES)
async def test_chat_completions(http: httpx.AsyncClient, case: str) -> None:
    body = {**CHAT_CASES[case], "temperature": 0}
    unary = await http.post("/v1/chat/completions", json=body)
    assert unary.status_code == 200, unary.text
    OPENAI.check("CreateChatCompletionResponse", unary.json())
    for options in ({}, {"stream_options": {"include_usage": True}}):
        chunks = await sse(http, "/v1/chat/completions", {**body, "stream": True, **options})
        assert chunks
        for chunk in chunks:
            OPENAI.check("CreateChatCompletionStreamResponse", chunk)


COMPLETION_CASES = {
    "plain": {"model": "mock", "prompt": "hello there"},
    "cut": {"model": "mock", "prompt": "a b c d", "max_tokens": 2},
    "prompts": {"model": "mock", "prompt": ["one", "two"], "n": 2},
    "logprobs": {"model": "gemma-batched", "prompt": "The sky is", "max_tokens": 3, "logprobs": 2, "echo": True},
}


@pytest.mark.parametrize("case", COMPLETION_CASES)
async def test_completions(http: httpx.AsyncClient, case: str) -> None:
    body = {**COMPLETION_CASES[case], "temperature": 0}
    unary = await http.post("/v1/completions", json=body)
    assert unary.status_code == 200, unary.text
    OPENAI.check("CreateCompletionResponse", unary.json())
    for options in ({}, {"stream_options": {"include_usage": True}}):
        chunks = await sse(http, "/v1/completions", {**body, "stream": True, **options})
        for chunk in chunks:
            OPENAI.check("CreateCompletionStreamResponse", chunk)


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embeddings(http: httpx.AsyncClient, encoding: str) -> None:
    body = {"model": "all-MiniLM-L6-v2", "input": ["one", "two"], "encoding_format": encoding}
    reply = await http.post("/v1/embeddings", json=body)
    assert reply.status_code == 200, reply.text
    OPENAI.check("CreateEmbeddingResponse", reply.json())


async def test_models(http: httpx.AsyncClient) -> None:
    listed = await http.get("/v1/models")
    OPENAI.check("ListModelsResponse", listed.json())
    one = await http.get(f"/v1/models/{GEMMA}")
    OPENAI.check("Model", one.json())


RESPONSES_CASES = {
    "plain": {"model": "mock", "input": "hello there", "instructions": "Be brief."},
    "cut": {"model": "mock", "input": "a b c d", "max_output_tokens": 2},
    "json schema": {
        "model": GEMMA,
        "input": "A city?",
        "text": {"format": {"type": "json_schema", "name": "city", "schema": WEATHER["parameters"]}},
        "max_output_tokens": 32,
    },
    "tool call": {
        "model": GEMMA,
        "input": "Weather in Paris?",
        "tools": [RESPONSES_TOOL],
        "tool_choice": "required",
        "max_output_tokens": 48,
    },
    "cut tool call": {
        "model": GEMMA,
        "input": "Weather in Paris?",
        "tools": [RESPONSES_TOOL],
        "tool_choice": "required",
        "max_output_tokens": 16,
    },
}


@pytest.mark.parametrize("case", RESPONSES_CASES)
async def test_responses(http: httpx.AsyncClient, case: str) -> None:
    body = {**RESPONSES_CASES[case], "temperature": 0}
    unary = await http.post("/v1/responses", json=body)
    assert unary.status_code == 200, unary.text
    OPEN_RESPONSES.check("ResponseResource", unary.json())
    OPENAI.check("Response", unary.json())
    events = await sse(http, "/v1/responses", {**body, "stream": True})
    for event in events:
        check_responses_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    started, final = events[0]["response"], events[-1]["response"]
    assert started["store"] == final["store"] and final["temperature"] == 0 and final["top_p"] == 1.0
    if "text" not in body:
        assert final["text"] == {"format": {"type": "text"}}  # plain text is only its type
    if final["status"] == "incomplete":  # the item being written when the cut came says so too
        assert final["output"] and final["output"][-1]["status"] == "incomplete" and final["completed_at"] is None
    else:
        assert all(item["status"] == "completed" for item in final["output"]) and final["completed_at"]


async def test_files(http: httpx.AsyncClient) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "x", "input": "y"}}
    files = {"file": ("input.jsonl", json.dumps(line).encode() + b"\n", "application/jsonl")}
    uploaded = await http.post("/v1/files", files=files, data={"purpose": "batch"})
    assert uploaded.status_code == 200, uploaded.text
    OPENAI.check("OpenAIFile", uploaded.json())
    file_id = uploaded.json()["id"]
    OPENAI.check("OpenAIFile", (await http.get(f"/v1/files/{file_id}")).json())
    OPENAI.check("ListFilesResponse", (await http.get("/v1/files", params={"limit": 2})).json())
    deleted = await http.delete(f"/v1/files/{file_id}")
    OPENAI.check("DeleteFileResponse", deleted.json())


async def test_batches(http: httpx.AsyncClient) -> None:
    lines = [
        {"custom_id": "ok", "method": "POST", "url": "/v1/chat/completions", "body": CHAT_CASES["plain"]},
        {
            "custom_id": "refused",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**CHAT_CASES["plain"], "model": "no-such-model"},
        },
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    uploaded = await http.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
    body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    created = await http.post("/v1/batches", json=body)
    assert created.status_code == 200, created.text
    OPENAI.check("Batch", created.json())
    batch_id = created.json()["id"]
    async with asyncio.timeout(120):
        while (batch := (await http.get(f"/v1/batches/{batch_id}")).json())["status"] not in ("completed", "failed"):
            OPENAI.check("Batch", batch)
            await asyncio.sleep(0.2)
    OPENAI.check("Batch", batch)
    OPENAI.check("ListBatchesResponse", (await http.get("/v1/batches", params={"limit": 2})).json())
    errors = (await http.get(f"/v1/files/{batch['error_file_id']}/content")).text.splitlines()
    [error] = [json.loads(line) for line in errors]
    assert error["custom_id"] == "refused" and error["response"]["status_code"] == 404
    assert error["response"]["body"]["error"]["code"] == "model_not_found"  # as over HTTP
    cancelled = await http.post(f"/v1/batches/{batch_id}/cancel")
    OPENAI.check("Batch", cancelled.json()) if cancelled.status_code == 200 else None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
        ("POST", "/v1/chat/completions", {"model": "mock", "messages": []}),
        ("POST", "/v1/completions", {"model": "mock", "prompt": "x", "max_tokens": -1}),
        ("POST", "/v1/embeddings", {"model": "all-MiniLM-L6-v2"}),
        ("POST", "/v1/responses", {"model": "mock", "input": []}),
        ("GET", "/v1/models/no-such-model", None),
        ("GET", "/v1/files/file-nope", None),
        ("GET", "/v1/batches/batch_nope", None),
    ],
)
async def test_errors(http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None) -> None:
    reply = await http.request(method, path, json=body)
    assert 400 <= reply.status_code < 500, reply.text
    OPENAI.check("ErrorResponse", reply.json())


MESSAGES_CASES = {
    "plain": {"model": "mock", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16},
    "cut": {"model": "mock", "messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 2},
    "tool use": {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [
            {"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}
        ],
        "tool_choice": {"type": "any"},
        "max_tokens": 48,
    },
}


UNANSWERED_TOOL_USE = [
    {"role": "user", "content": "Weather in four cities?"},
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": f"toolu_{i}", "name": "get_weather", "input": {}} for i in range(4)],
    },
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_0", "content": "sunny"}]},
]


async def named_sse(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of a stream with named events."""
    events, name = [], ""
    async with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


@pytest.mark.parametrize("case", MESSAGES_CASES)
async def test_anthropic_messages(http: httpx.AsyncClient, case: str) -> None:
    body = {**MESSAGES_CASES[case], "temperature": 0}
    unary = await http.post("/v1/messages", json=body)
    assert unary.status_code == 200, unary.text
    anthropic_spec.Message.model_validate(unary.json())
    events = await named_sse(http, "/v1/messages", {**body, "stream": True})
    anthropic_spec.check_stream(events)
    assert events[0][1]["message"]["usage"]["input_tokens"] == unary.json()["usage"]["input_tokens"] > 0
    counted = await http.post("/v1/messages/count_tokens", json={k: v for k, v in body.items() if k != "max_tokens"})
    anthropic_spec.TokenCount.model_validate(counted.json())


@pytest.mark.parametrize(
    "body",
    [
        {"model": "no-such-model", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
        {"model": "mock", "max_tokens": 8, "messages": []},
        {"model": "mock", "messages": [{"role": "user", "content": "x"}]},
        {"model": "mock", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5},
        {"model": "mock", "max_tokens": 8, "messages": UNANSWERED_TOOL_USE},
    ],
)
async def test_anthropic_errors(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    reply = await http.post("/v1/messages", json=body)
    assert 400 <= reply.status_code < 500, reply.text
    anthropic_spec.Error.model_validate(reply.json())
