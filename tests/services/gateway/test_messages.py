"""Anthropic's Messages API at the gateway, through the official `anthropic` SDK, on the mock
model (exact text) and the real Gemma model (tool use)."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.conftest import GEMMA

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def claude(gateway_url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway_url, api_key="unused", max_retries=0)


async def test_create_answers_in_anthropics_shape(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="mock", max_tokens=32, system="Be brief.", messages=[{"role": "user", "content": "hello"}]
    )
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "[mock-text:mock] hello"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.model == "mock"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 2

    limited = await claude.messages.create(
        model="mock", max_tokens=1, messages=[{"role": "user", "content": [{"type": "text", "text": "a b c"}]}]
    )
    assert limited.stop_reason == "max_tokens"


async def test_stream_sends_anthropics_event_sequence(claude: anthropic.AsyncAnthropic) -> None:
    kinds = []
    async with claude.messages.stream(
        model="mock", max_tokens=32, messages=[{"role": "user", "content": "one two"}]
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[1] == "content_block_start" and "content_block_delta" in kinds
    assert kinds[-3:-1] == ["content_block_stop", "message_delta"]
    assert final.content[0].text == "[mock-text:mock] one two"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3


async def test_tool_use_round_trip_on_the_real_model(claude: anthropic.AsyncAnthropic) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = await claude.messages.create(
        model=GEMMA,
        max_tokens=64,
        messages=[question],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict) and isinstance(call.input.get("city"), str)

    answer = await claude.messages.create(
        model=GEMMA,
        max_tokens=16,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            question,  # type: ignore[list-item]
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}]},
        ],
        tool_choice={"type": "none"},
    )
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in answer.content] == ["text"] and answer.content[0].text  # type: ignore[union-attr]


async def test_streamed_tool_use_arrives_as_input_json_deltas(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model=GEMMA,
        max_tokens=64,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ) as stream:
        partial = [event.partial_json async for event in stream if event.type == "input_json"]
        final = await stream.get_final_message()
    [call] = [block for block in final.content if block.type == "tool_use"]
    assert final.stop_reason == "tool_use" and call.name == "get_weather"
    assert json.loads("".join(partial)) == call.input


async def test_errors_come_in_anthropics_error_body(claude: anthropic.AsyncAnthropic, gateway_url: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        await claude.messages.create(
            model="mock", max_tokens=8, messages=[{"role": "user", "content": "x"}], extra_body={"temperature": 1.5}
        )
    assert bad.value.body["type"] == "error" and "temperature" in bad.value.body["error"]["message"]  # type: ignore[index]
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        response = await http.post("/v1/messages", json={"model": "mock", "messages": []})
        body = response.json()
        assert response.status_code == 400 and body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        unsupported = await http.post(
            "/v1/messages",
            json={"model": "mock", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
        )
        assert unsupported.status_code == 400 and "document" in unsupported.json()["error"]["message"]


async def test_models_answer_anthropic_clients_in_anthropics_shape(
    claude: anthropic.AsyncAnthropic, gateway_url: str
) -> None:
    """Anthropic's SDK lists and pages the chat models by after_id and before_id, and retrieves one;
    OpenAI's clients (no anthropic-version header) still get OpenAI's list."""
    everything = await claude.models.list(limit=1000)
    names = [model.id for model in everything.data]
    assert "mock" in names and len(names) == len(set(names)) >= 3 and everything.has_more is False
    assert all(model.type == "model" and model.created_at.year == 1970 for model in everything.data)
    assert [model.id async for model in claude.models.list(limit=2)] == names  # the SDK follows after_id
    first = await claude.models.list(limit=1)
    assert first.has_more and first.first_id == first.last_id == names[0]
    before = await claude.models.list(limit=2, before_id=names[-1])
    assert [m.id for m in before.data] == names[-3:-1] and before.has_more == (len(names) > 3)

    mock = await claude.models.retrieve("mock")
    assert mock.id == "mock" and mock.display_name == "mock" and mock.max_input_tokens
    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.models.retrieve("all-MiniLM-L6-v2")  # an embedding model: not for /v1/messages
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    for cursor in ({"after_id": "forged\x00"}, {"before_id": "x" * 5000}, {"after_id": "mock", "before_id": "mock"}):
        with pytest.raises(anthropic.BadRequestError) as forged:
            await claude.models.list(**cursor)  # type: ignore[arg-type]
        assert forged.value.body["type"] == "error" and len(forged.value.body["error"]["message"]) < 200  # type: ignore[index]

    async with httpx.AsyncClient(base_url=gateway_url) as http:
        openai = (await http.get("/v1/models")).json()
    assert openai["object"] == "list" and {"mock", "all-MiniLM-L6-v2"} <= {m["id"] for m in openai["data"]}


async def test_the_node_that_answered_is_named(claude: anthropic.AsyncAnthropic) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="mock", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-llmmesh-node"] == "local"


async def test_count_tokens_counts_the_rendered_prompt(claude: anthropic.AsyncAnthropic) -> None:
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    plain = await claude.messages.count_tokens(model=GEMMA, messages=question)  # type: ignore[arg-type]
    with_system = await claude.messages.count_tokens(model=GEMMA, system="Answer in French.", messages=question)  # type: ignore[arg-type]
    with_tools = await claude.messages.count_tokens(model=GEMMA, messages=question, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert 8 < plain.input_tokens < with_system.input_tokens < with_tools.input_tokens
    # The count is what generation reads: the same prompt's usage says so.
    message = await claude.messages.create(model=GEMMA, max_tokens=1, messages=question)  # type: ignore[arg-type]
    assert message.usage.input_tokens == plain.input_tokens
    assert (await claude.messages.count_tokens(model="mock", messages=question)).input_tokens == 6  # type: ignore[arg-type]
