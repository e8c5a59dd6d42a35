"""JSON output and tool calls through the gateway, on the real Gemma 3 270M (grammar-constrained)."""

import json
import os
from typing import Literal

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.conftest import GEMMA


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user", "guest"]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


async def test_sdk_parse_returns_a_parsed_object(client) -> None:
    completion = await client.chat.completions.parse(
        model=GEMMA,
        messages=[{"role": "user", "content": "Describe a user of our system."}],
        response_format=Person,
        max_tokens=120,
        temperature=0.0,
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and 0 <= person.age <= 120


async def test_json_object_parses(client) -> None:
    completion = await client.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
        response_format={"type": "json_object"},
        max_tokens=150,
        temperature=0.0,
    )
    if completion.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(completion.choices[0].message.content), dict)
    else:
        assert completion.choices[0].finish_reason == "length"


NESTED_SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "status": {"enum": ["open", "closed", "pending"]},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5},
            "labels": {"type": "array", "items": {"enum": ["bug", "feature", "docs"]}, "minItems": 1, "maxItems": 3},
        },
        "required": ["status", "priority", "labels"],
    },
    {
        "type": "object",
        "properties": {
            "order": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 100, "maximum": 199},
                    "lines": {
                        "type": "array",
                        "maxItems": 2,
                        "items": {
                            "type": "object",
                            "properties": {
                                "sku": {"enum": ["A1", "B2", "C3"]},
                                "qty": {"type": "integer", "exclusiveMinimum": 0, "maximum": 9},
                            },
                            "required": ["sku", "qty"],
                        },
                    },
                },
                "required": ["id", "lines"],
            },
            "paid": {"type": "boolean"},
        },
        "required": ["order", "paid"],
    },
]


# Requests of n=4 samples at temperature 1.0 per schema: `make fuzz` draws 20 samples, `make test` 4.
SAMPLED_REQUESTS = int(os.environ.get("LLMMESH_SAMPLED_REQUESTS", "1"))


@pytest.mark.parametrize("schema", NESTED_SCHEMAS, ids=["enums-ranges-arrays", "nested-objects"])
async def test_sampled_outputs_always_validate(client, schema) -> None:
    validated = 0
    for _ in range(SAMPLED_REQUESTS):
        completion = await client.chat.completions.create(
            model=GEMMA,
            messages=[{"role": "user", "content": "Produce a record."}],
            response_format={"type": "json_schema", "json_schema": {"name": "record", "schema": schema}},
            max_tokens=120,
            temperature=1.0,
            n=4,
        )
        for choice in completion.choices:
            assert choice.finish_reason in ("stop", "length")
            if choice.finish_reason == "stop":  # a length stop is reported as such, never passed off as valid
                jsonschema.validate(json.loads(choice.message.content), schema)
                validated += 1
    assert validated >= 4 * SAMPLED_REQUESTS * 3 // 5  # most samples finish within max_tokens


async def test_required_tool_choice_calls_one_of_the_tools(client) -> None:
    completion = await client.chat.completions.create(
        model=GEMMA,
        messages=ASK,
        tools=[WEATHER, ADD],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=100,
        temperature=0.7,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    tool = {"get_weather": WEATHER, "add": ADD}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


async def test_named_tool_choice_calls_that_function(client) -> None:
    completion = await client.chat.completions.create(
        model=GEMMA,
        messages=ASK,
        tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100,
        temperature=0.0,
    )
    calls = completion.choices[0].message.tool_calls
    assert calls and all(call.function.name == "get_weather" for call in calls)
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])


async def test_round_trip_call_result_answer(client) -> None:
    first = await client.chat.completions.create(
        model=GEMMA,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=100,
        temperature=0.0,
    )
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    final = await client.chat.completions.create(
        model=GEMMA,
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=20,
        temperature=0.0,
    )
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content


async def test_streamed_tool_call_deltas_reassemble(client) -> None:
    kwargs = {
        "model": GEMMA,
        "messages": ASK,
        "tools": [WEATHER, ADD],
        "max_tokens": 100,
        "temperature": 0.0,
        "tool_choice": {"type": "function", "function": {"name": "add"}},
        "parallel_tool_calls": False,
    }
    whole = (await client.chat.completions.create(**kwargs)).choices[0].message.tool_calls[0]
    names, arguments, finish, ids, pieces = {}, {}, None, set(), 0
    async for chunk in await client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                names[delta.index] = names.get(delta.index, "") + (delta.function.name or "")
                arguments[delta.index] = arguments.get(delta.index, "") + (delta.function.arguments or "")
                ids.add(delta.id) if delta.id else None
                pieces += bool(delta.function.arguments)
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert names == {0: "add"} and len(ids) == 1
    assert pieces > 1  # the arguments stream as they are generated, not in one piece
    assert json.loads(arguments[0]) == json.loads(whole.function.arguments)  # greedy: the same call


async def test_unsupported_schema_is_400(gateway_url) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 3}}}
    body = {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    }
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "multipleOf" in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "response_format"


async def test_json_on_a_backend_that_cannot_constrain_is_400(gateway_url) -> None:
    body = {"model": "mock", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and "cannot constrain" in response.json()["error"]["message"]


async def test_completions_take_response_format(gateway_url) -> None:
    body = {
        "model": GEMMA,
        "prompt": "A JSON object:",
        "max_tokens": 60,
        "temperature": 0.0,
        "response_format": {"type": "json_object"},
    }
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        choice = (await http.post("/v1/completions", json=body)).json()["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["text"]), dict)


async def test_langchain_tools_and_structured_output(gateway_url) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=GEMMA, base_url=f"{gateway_url}/v1", api_key="unused", temperature=0, max_tokens=120)

    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """Current weather in a city."""
        return "sunny"

    message = await llm.bind_tools([get_weather], tool_choice="required").ainvoke("Weather in Oslo?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"]["unit"] in ("celsius", "fahrenheit")
    person = await llm.with_structured_output(Person, method="json_schema").ainvoke("Describe a guest.")
    assert isinstance(person, Person)


async def test_transformers_backend_through_the_mesh(client) -> None:
    """The transformers backend (llguidance constraint) behind the same gateway and gRPC service."""
    completion = await client.chat.completions.parse(
        model="gemma-hf",
        messages=[{"role": "user", "content": "Describe a user of our system."}],
        response_format=Person,
        max_tokens=80,
        temperature=0.0,
    )
    assert isinstance(completion.choices[0].message.parsed, Person)
    assert completion.model == "gemma-hf"
