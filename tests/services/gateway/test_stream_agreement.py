"""The same generation answers the same streamed or not, in all four generating families:
the same text, the same calls (a call cut at max_tokens included), finish reason and usage.
Greedy decoding on the real model, so both requests generate the same tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import jiter
import pytest

from tests.conftest import GEMMA
from tests.services.gateway.test_spec_conformance import named_sse, sse

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TIMESTAMP = {"type": "object", "properties": {}}
STORY = "Write a long story about a dragon."


@dataclass
class Answer:
    """What a reply says, whatever its family's shape."""

    text: str = ""
    calls: list[tuple[str, Any]] = field(default_factory=list)  # (name, arguments as the family gives them)
    finish: str | None = None
    usage: tuple[int, int] = (0, 0)


# (what is asked, the tools offered and how) per case; each family writes it its own way.
CASES = {
    "prose": (STORY, None, None, 24),
    "prose, tools offered": (STORY, "get_current_timestamp", "auto", 6),
    "call": ("Weather in Paris?", "get_weather", "required", 48),
    "call cut at max tokens": ("Weather in Paris?", "get_weather", "required", 16),
    "calls cut after a whole one": (
        "Weather in Paris, Rome, Oslo and Lima? Call once per city.",
        "get_weather",
        "required",
        40,
    ),
}


def _tool(name: str) -> tuple[str, dict[str, Any]]:
    return name, WEATHER if name == "get_weather" else TIMESTAMP


def chat_body(case: str) -> dict[str, Any]:
    prompt, tool, choice, limit = CASES[case]
    body: dict[str, Any] = {"model": GEMMA, "messages": [{"role": "user", "content": prompt}], "max_tokens": limit}
    if tool:
        name, parameters = _tool(tool)
        body |= {
            "tools": [{"type": "function", "function": {"name": name, "parameters": parameters}}],
            "tool_choice": choice,
        }
    return body


async def chat(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[Answer, Answer]:
    reply = (await http.post("/v1/chat/completions", json=body)).json()
    [choice] = reply["choices"]
    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in choice["message"].get("tool_calls") or ()]
    usage = (reply["usage"]["prompt_tokens"], reply["usage"]["completion_tokens"])
    unary = Answer(choice["message"]["content"] or "", calls, choice["finish_reason"], usage)
    streamed, pieces = Answer(), {}
    for chunk in await sse(
        http, "/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
    ):
        if chunk["usage"]:
            streamed.usage = (chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"])
        for choice in chunk["choices"]:
            streamed.text += choice["delta"].get("content") or ""
            for call in choice["delta"].get("tool_calls") or ():
                name, arguments = pieces.get(call["index"], ("", ""))
                pieces[call["index"]] = (
                    name + call["function"].get("name", ""),
                    arguments + call["function"]["arguments"],
                )
            streamed.finish = choice["finish_reason"] or streamed.finish
    streamed.calls = [pieces[index] for index in sorted(pieces)]
    return unary, streamed


async def completions(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[Answer, Answer]:
    body = {
        "model": GEMMA,
        "prompt": body["messages"][0]["content"],
        "max_tokens": body["max_tokens"],
        "temperature": 0,
    }
    reply = (await http.post("/v1/completions", json=body)).json()
    [choice] = reply["choices"]
    unary = Answer(
        choice["text"],
        [],
        choice["finish_reason"],
        (reply["usage"]["prompt_tokens"], reply["usage"]["completion_tokens"]),
    )
    streamed = Answer()
    for chunk in await sse(
        http, "/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}}
    ):
        if chunk["usage"]:
            streamed.usage = (chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"])
        for choice in chunk["choices"]:
            streamed.text += choice["text"]
            streamed.finish = choice["finish_reason"] or streamed.finish
    return unary, streamed


async def messages(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[Answer, Answer]:
    anthropic = {k: v for k, v in body.items() if k not in ("tools", "tool_choice")}
    if "tools" in body:
        [tool] = body["tools"]
        function = tool["function"]
        anthropic["tools"] = [{"name": function["name"], "input_schema": function["parameters"]}]
        anthropic["tool_choice"] = {"type": "any" if body["tool_choice"] == "required" else "auto"}
    reply = (await http.post("/v1/messages", json=anthropic)).json()
    unary = Answer(
        "".join(b["text"] for b in reply["content"] if b["type"] == "text"),
        [(b["name"], b["input"]) for b in reply["content"] if b["type"] == "tool_use"],
        reply["stop_reason"],
        (reply["usage"]["input_tokens"], reply["usage"]["output_tokens"]),
    )
    streamed, blocks = Answer(), {}
    for name, data in await named_sse(http, "/v1/messages", {**anthropic, "stream": True}):
        if name == "message_start":
            prompt_tokens = data["message"]["usage"]["input_tokens"]
        elif name == "content_block_start" and data["content_block"]["type"] == "tool_use":
            blocks[data["index"]] = (data["content_block"]["name"], "")
        elif name == "content_block_delta" and data["delta"]["type"] == "text_delta":
            streamed.text += data["delta"]["text"]
        elif name == "content_block_delta":
            tool_name, partial = blocks[data["index"]]
            blocks[data["index"]] = (tool_name, partial + data["delta"]["partial_json"])
        elif name == "message_delta":
            streamed.finish, streamed.usage = (
                data["delta"]["stop_reason"],
                (prompt_tokens, data["usage"]["output_tokens"]),
            )
    # As Anthropic's SDK reads the streamed input: its partial JSON, complete values only.
    streamed.calls = [(n, jiter.from_json((p or "{}").encode(), partial_mode=True)) for n, p in blocks.values()]
    return unary, streamed


async def responses(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[Answer, Answer]:
    request: dict[str, Any] = {
        "model": GEMMA,
        "input": body["messages"][0]["content"],
        "max_output_tokens": body["max_tokens"],
        "temperature": 0,
    }
    if "tools" in body:
        [tool] = body["tools"]
        request |= {"tools": [{"type": "function", **tool["function"]}], "tool_choice": body["tool_choice"]}

    def answer(response: dict[str, Any]) -> Answer:
        text = "".join(p["text"] for item in response["output"] if item["type"] == "message" for p in item["content"])
        calls = [(i["name"], i["arguments"]) for i in response["output"] if i["type"] == "function_call"]
        usage = (response["usage"]["input_tokens"], response["usage"]["output_tokens"])
        return Answer(text, calls, response["status"], usage)

    unary = answer((await http.post("/v1/responses", json=request)).json())
    events = await sse(http, "/v1/responses", {**request, "stream": True})
    streamed = answer(events[-1]["response"])
    streamed.text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    names = [
        e["item"]["name"]
        for e in events
        if e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call"
    ]
    arguments: dict[str, str] = {}
    for event in events:
        if event["type"] == "response.function_call_arguments.delta":
            arguments[event["item_id"]] = arguments.get(event["item_id"], "") + event["delta"]
    added = [
        e["item"]["id"]
        for e in events
        if e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call"
    ]
    streamed.calls = [(name, arguments.get(item_id, "")) for name, item_id in zip(names, added, strict=True)]
    return unary, streamed


FAMILIES = {"chat": chat, "completions": completions, "messages": messages, "responses": responses}


@pytest.mark.parametrize(
    ("family", "case"),
    [(family, case) for case in CASES for family in FAMILIES if family != "completions" or not CASES[case][1]],
)
async def test_streamed_and_unary_answers_agree(http: httpx.AsyncClient, family: str, case: str) -> None:
    body = {**chat_body(case), "temperature": 0}
    unary, streamed = await FAMILIES[family](http, body)
    assert streamed == unary
    assert unary.usage[0] > 0 and unary.usage[1] > 0
    if case == "prose, tools offered":
        assert unary.text and not unary.calls  # the answer, as far as it got, streamed as prose
    if case.startswith("call") and family != "messages":
        assert unary.calls and all(name == "get_weather" for name, _ in unary.calls)
    if "cut" in case:
        assert unary.finish in ("length", "max_tokens", "incomplete")
        if family != "messages":
            with pytest.raises(json.JSONDecodeError):  # the cut call, as far as it was generated
                json.loads(unary.calls[-1][1])
