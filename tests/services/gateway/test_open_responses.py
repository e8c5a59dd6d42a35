"""The Open Responses compliance suite's six scenarios (basic, streaming, system prompt, tool
calling, image input, multi-turn), each answer and event validated against the Open Responses
schemas. Gemma 3 270M takes all but images; images go to `mock`, a stand-in vision model."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import GEMMA
from tests.services.gateway.test_spec_conformance import sse
from tests.specs import OPEN_RESPONSES, check_responses_event

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": None,
}
PIXEL = (  # a 1x1 PNG
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def respond(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    reply = await http.post("/v1/responses", json={"temperature": 0, "max_output_tokens": 24, **body})
    assert reply.status_code == 200, reply.text
    OPEN_RESPONSES.check("ResponseResource", reply.json())
    return reply.json()


def output_text(response: dict[str, Any]) -> str:
    return "".join(p["text"] for item in response["output"] if item["type"] == "message" for p in item["content"])


async def test_basic(http: httpx.AsyncClient) -> None:
    response = await respond(http, {"model": GEMMA, "input": "Say hello."})
    assert response["status"] in ("completed", "incomplete") and output_text(response)
    assert response["usage"]["input_tokens"] > 0


async def test_streaming(http: httpx.AsyncClient) -> None:
    events = await sse(
        http, "/v1/responses", {"model": GEMMA, "input": "Say hello.", "max_output_tokens": 8, "stream": True}
    )
    for event in events:
        check_responses_event(event)
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas and deltas == output_text(events[-1]["response"])


async def test_system_prompt(http: httpx.AsyncClient) -> None:
    response = await respond(http, {"model": GEMMA, "input": "Who are you?", "instructions": "You are a pirate."})
    assert response["instructions"] == "You are a pirate." and output_text(response)


async def test_tool_calling(http: httpx.AsyncClient) -> None:
    asked = {
        "model": GEMMA,
        "input": "Weather in Paris?",
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_output_tokens": 48,
    }
    response = await respond(http, asked)
    [call, *_] = [item for item in response["output"] if item["type"] == "function_call"]
    assert call["name"] == "get_weather" and call["status"] == "completed"
    answered = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call["call_id"], "name": call["name"], "arguments": call["arguments"]},
        {"type": "function_call_output", "call_id": call["call_id"], "output": '{"sky": "clear"}'},
    ]
    follow_up = await respond(http, {"model": GEMMA, "input": answered, "tools": [WEATHER], "tool_choice": "none"})
    assert output_text(follow_up)


@pytest.mark.parametrize("image", [{"image_url": PIXEL}, {"image_url": "https://example.com/cat.png"}])
async def test_image_input(http: httpx.AsyncClient, image: dict[str, str]) -> None:
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", **image}]
    response = await respond(http, {"model": "mock", "input": [{"role": "user", "content": content}]})
    assert output_text(response) == "[mock-text:mock] What is this? [1 image]"


async def test_multi_turn(http: httpx.AsyncClient) -> None:
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    assert output_text(await respond(http, {"model": GEMMA, "input": history}))
    first = await respond(http, {"model": "mock", "input": "My name is Ada.", "store": True})
    assert first["store"] is True
    second = await respond(http, {"model": "mock", "input": "And yours?", "previous_response_id": first["id"]})
    assert second["previous_response_id"] == first["id"] and output_text(second) == "[mock-text:mock] And yours?"
