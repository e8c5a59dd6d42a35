"""Tool calls in a model's own syntax (Hermes <tool_call> blocks), grammar-constrained on the
real Gemma weights through llama.cpp (GBNF) and transformers (llguidance)."""

import json

import jsonschema
import pytest

from tests.services.gateway.test_structured_output import ADD, ASK, WEATHER

TOOLS = {"get_weather": WEATHER, "add": ADD}


@pytest.mark.parametrize("model", ["gemma-hermes", "gemma-hf-hermes", "gemma-llama3-json"])
async def test_required_calls_come_back_valid(client, model: str) -> None:
    completion = await client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=[WEATHER, ADD],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        temperature=0.0,  # sampled strings can run to max_tokens; greedy keeps this deterministic
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert len(choice.message.tool_calls) == 1
    for call in choice.message.tool_calls:
        jsonschema.validate(json.loads(call.function.arguments), TOOLS[call.function.name]["function"]["parameters"])


async def test_streamed_hermes_calls_reassemble_and_round_trip(client) -> None:
    kwargs = {
        "model": "gemma-hermes",
        "messages": ASK,
        "tools": [WEATHER, ADD],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 100,
        "temperature": 0.0,
    }
    whole = (await client.chat.completions.create(**kwargs)).choices[0].message.tool_calls
    arguments, names, pieces, finish = "", "", 0, None
    async for chunk in await client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                names += delta.function.name or ""
                arguments += delta.function.arguments or ""
                pieces += bool(delta.function.arguments)
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and names == "get_weather" and pieces > 1
    assert json.loads(arguments) == json.loads(whole[0].function.arguments)

    # The call and its result go back in the same syntax; the model then answers in prose.
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [whole[0].model_dump()]},
        {"role": "tool", "tool_call_id": whole[0].id, "content": '{"temperature": 21}'},
    ]
    final = await client.chat.completions.create(
        model="gemma-hermes", messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=16
    )
    assert final.choices[0].message.content and final.choices[0].message.tool_calls is None


async def test_auto_lets_the_model_answer_or_call(client) -> None:
    completion = await client.chat.completions.create(
        model="gemma-hermes", messages=ASK, tools=[WEATHER], tool_choice="auto", max_tokens=40, temperature=0.0
    )
    choice = completion.choices[0]
    if choice.finish_reason == "tool_calls":
        jsonschema.validate(
            json.loads(choice.message.tool_calls[0].function.arguments), WEATHER["function"]["parameters"]
        )
    else:  # prose: a reply is either calls or an answer
        assert choice.finish_reason in ("stop", "length")
        assert choice.message.content and not choice.message.tool_calls
