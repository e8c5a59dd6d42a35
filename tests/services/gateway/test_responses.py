"""OpenAI's Responses API at the gateway (its stateless subset), through the official `openai`
SDK: plain, streamed, function calls with their outputs, and json_schema output."""

from __future__ import annotations

import json

import asyncpg
import httpx
import openai
import pytest

from services.gateway.app import build_app
from services.inference.server.server import InferenceServer
from tests.conftest import GEMMA, gateway_settings, serve_http
from tests.specs import OPEN_RESPONSES, OPENAI

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_create_answers_in_the_responses_shape(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model="mock", input="hello", instructions="Be brief.")
    assert response.object == "response" and response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == "[mock-text:mock] hello"
    [item] = response.output
    assert item.type == "message" and item.role == "assistant"
    assert response.usage is not None and response.usage.output_tokens == 2 and response.usage.input_tokens > 0

    cut = await client.responses.create(
        model="mock",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "a b c"}]}],
        max_output_tokens=1,
    )
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]


async def test_stream_sends_the_responses_event_types(client: openai.AsyncOpenAI) -> None:
    kinds, text = [], []
    stream = await client.responses.create(model="mock", input="one two", stream=True)
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text.append(event.delta)
        if event.type == "response.completed":
            final = event.response
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(text) == "[mock-text:mock] one two" == final.output_text


async def test_function_calls_and_their_outputs_on_the_real_model(client: openai.AsyncOpenAI) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = await client.responses.create(
        model=GEMMA,
        input=[question],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
    )
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)

    answer = await client.responses.create(
        model=GEMMA,
        input=[
            question,  # type: ignore[list-item]
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=16,
    )
    assert answer.output_text and [item.type for item in answer.output] == ["message"]


async def test_streamed_function_call_arguments(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model=GEMMA,
        input="Weather in Oslo?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=64,
        stream=True,
    )
    pieces, done = [], None
    async for event in stream:
        if event.type == "response.function_call_arguments.delta":
            pieces.append(event.delta)
        if event.type == "response.function_call_arguments.done":
            done = event.arguments
        if event.type == "response.completed":
            final = event.response
    [call] = [item for item in final.output if item.type == "function_call"]
    assert "".join(pieces) == done == call.arguments and "city" in json.loads(call.arguments)


async def test_json_schema_output(client: openai.AsyncOpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    response = await client.responses.create(
        model=GEMMA,
        input="Describe the weather in Rome as JSON.",
        text={"format": {"type": "json_schema", "name": "weather", "schema": schema, "strict": True}},
        max_output_tokens=48,
    )
    parsed = json.loads(response.output_text)
    assert set(parsed) == {"city", "sunny"} and isinstance(parsed["sunny"], bool)


async def test_what_is_not_supported_is_a_clear_400(client: openai.AsyncOpenAI, gateway_url: str) -> None:
    with pytest.raises(openai.NotFoundError, match="No stored response 'resp_123'"):
        await client.responses.create(model="mock", input="hi", previous_response_id="resp_123")
    with pytest.raises(openai.BadRequestError, match="'reasoning'"):
        await client.responses.create(model="mock", input=[{"type": "reasoning", "summary": []}])  # type: ignore[list-item]
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="no-such-model", input="hi")
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        response = await http.post("/v1/responses", json={"model": "mock", "input": []})
        assert response.status_code == 400 and response.json()["error"]["param"] == "input"


async def test_previous_response_id_continues_a_stored_conversation(client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(model="mock", input="my name is Ada", instructions="Be kind.")
    assert first.store and first.usage is not None
    second = await client.responses.create(model="mock", input="what is my name", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.usage is not None
    # The mock counts the words of every message it reads: the stored turns came back, the old
    # instructions did not (each request gives its own).
    assert second.usage.input_tokens == 4 + len(first.output_text.split()) + 4

    stream = await client.responses.create(model="mock", input="and now", previous_response_id=second.id, stream=True)
    async for event in stream:
        if event.type == "response.completed":
            streamed = event.response
    assert streamed.store and streamed.usage is not None and streamed.usage.input_tokens > second.usage.input_tokens
    third = await client.responses.create(model="mock", input="last", previous_response_id=streamed.id)
    assert third.usage is not None and third.usage.input_tokens > streamed.usage.input_tokens

    unstored = await client.responses.create(model="mock", input="forget me", store=False)
    assert not unstored.store
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="mock", input="hi", previous_response_id=unstored.id)


async def test_a_stored_response_is_retrieved_as_answered_until_deleted(
    client: openai.AsyncOpenAI, gateway_url: str
) -> None:
    created = await client.responses.create(model="mock", input="remember this", metadata={"topic": "memory"})
    retrieved = await client.responses.retrieve(created.id)
    assert retrieved.model_dump() == created.model_dump()
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        raw = (await http.get(f"/v1/responses/{created.id}")).json()
        OPENAI.check("Response", raw)
        OPEN_RESPONSES.check("ResponseResource", raw)
        streamed_again = await http.get(f"/v1/responses/{created.id}", params={"stream": "true"})
        assert streamed_again.status_code == 400 and streamed_again.json()["error"]["param"] == "stream"
        for method, path in (
            ("GET", "/v1/responses/resp_%00"),  # PostgreSQL's text cannot hold NUL: a 400, not a 500
            ("DELETE", "/v1/responses/resp_%00"),
            ("GET", "/v1/responses/resp_%00/input_items"),
            ("GET", "/v1/responses/resp_%ED%A0%80"),  # a lone surrogate, UTF-8 encoded
        ):
            hostile = await http.request(method, path)
            if "%00" in path:
                assert hostile.status_code == 400 and hostile.json()["error"]["param"] == "response_id"
            else:  # read as the replacement character: an id no response has
                assert hostile.status_code == 404, hostile.text

    stream = await client.responses.create(model="mock", input="and streamed", stream=True)
    async for event in stream:
        if event.type == "response.completed":
            streamed = event.response
    assert (await client.responses.retrieve(streamed.id)).model_dump() == streamed.model_dump()

    unstored = await client.responses.create(model="mock", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)

    await client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model="mock", input="what was it", previous_response_id=created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(created.id)


async def test_input_items_list_the_turns_a_response_was_answered_from(
    client: openai.AsyncOpenAI, gateway_url: str
) -> None:
    first = await client.responses.create(model="mock", input="my name is Ada", instructions="Be kind.")
    turns = [
        {"role": "user", "content": "what is the weather"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    second = await client.responses.create(model="mock", input=turns, previous_response_id=first.id)  # type: ignore[arg-type]

    oldest_first = [item async for item in client.responses.input_items.list(second.id, order="asc", limit=2)]
    kinds = ["message", "message", "message", "function_call", "function_call_output"]
    assert [item.type for item in oldest_first] == kinds
    assert [item.role for item in oldest_first[:3]] == ["user", "assistant", "user"]  # type: ignore[union-attr]
    assert oldest_first[1].content[0].text == first.output_text  # type: ignore[union-attr]
    assert oldest_first[3].call_id == oldest_first[4].call_id == "call_1"  # type: ignore[union-attr]
    newest_first = await client.responses.input_items.list(second.id)
    assert [item.id for item in newest_first.data] == [item.id for item in oldest_first][::-1]
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        listed = await http.get(f"/v1/responses/{second.id}/input_items", params={"limit": 2})
        OPENAI.check("ResponseItemList", listed.json())
        assert listed.json()["has_more"] is True
        forged = await http.get(f"/v1/responses/{second.id}/input_items", params={"after": "msg_forged"})
        assert forged.status_code == 400 and forged.json()["error"]["param"] == "after"
    await client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.input_items.list(second.id)


async def test_without_a_database_stored_responses_are_a_clear_400(inference: InferenceServer) -> None:
    server, task, url = await serve_http(build_app(gateway_settings(inference_target=f"127.0.0.1:{inference.port}")))
    try:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answered = await client.responses.create(model="mock", input="hi")
        assert not answered.store  # nothing to keep it in, and the response says so
        for call in (
            client.responses.retrieve(answered.id),
            client.responses.delete(answered.id),
            client.responses.create(model="mock", input="hi", previous_response_id=answered.id),
        ):
            with pytest.raises(openai.BadRequestError, match="DATABASE_URL"):
                await call
    finally:
        server.should_exit = True
        await task


async def test_stored_responses_are_their_owners_and_expire(gateway_url: str, make_key, postgres_url: str) -> None:
    alice, bob = [
        openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0)
        for key in (await make_key(["chat"]), await make_key(["chat"]))
    ]
    kept = await alice.responses.create(model="mock", input="a secret")
    with pytest.raises(openai.NotFoundError):
        await bob.responses.create(model="mock", input="tell me", previous_response_id=kept.id)
    with pytest.raises(openai.NotFoundError):
        await bob.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError):
        await bob.responses.delete(kept.id)
    assert (await alice.responses.retrieve(kept.id)).id == kept.id
    embedder = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=await make_key(["embeddings"]), max_retries=0)
    for call in (embedder.responses.retrieve(kept.id), embedder.responses.input_items.list(kept.id)):
        with pytest.raises(openai.PermissionDeniedError):  # the chat scope, as for creating one
            await call
    assert (await alice.responses.create(model="mock", input="again", previous_response_id=kept.id)).store

    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute(
            "UPDATE stored_responses SET expires_at = now() - interval '1 second' WHERE response_id = $1", kept.id
        )
    finally:
        await connection.close()
    with pytest.raises(openai.NotFoundError, match="expired"):
        await alice.responses.create(model="mock", input="again", previous_response_id=kept.id)
