"""Tool calling on any model that can be held to a JSON schema.

The generic format, for models whose chat template has no tool syntax of its own
(Gemma 3 270M is one): the tools are described in a system message, and the
reply is constrained to one JSON object,

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}

or, when the model may answer instead (tool_choice auto), {"content": "..."}.
Because decoding follows the schema, every call names a real tool and its
arguments validate against that tool's parameters. Earlier calls and tool
results in the conversation are written back in the same format.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from services.inference.domain import (
    ChatMessage,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
)

MAX_PARALLEL = 4


def reply_schema(tools: tuple[Tool, ...], choice: ToolChoice, parallel: bool) -> dict[str, Any]:
    """The JSON schema a reply must match."""
    offered = [t for t in tools if choice.mode is not ToolChoiceMode.FUNCTION or t.name == choice.function_name]
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters_schema()},
            "required": ["name", "arguments"],
        }
        for tool in offered
    ]
    items: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    # Parallel calls are capped: a small model left unbounded repeats calls until max_tokens.
    # A named function is called once, as forcing one function means.
    single = not parallel or choice.mode is ToolChoiceMode.FUNCTION
    array: dict[str, Any] = {"type": "array", "items": items, "minItems": 1, "maxItems": 1 if single else MAX_PARALLEL}
    call_reply = {"type": "object", "properties": {"tool_calls": array}, "required": ["tool_calls"]}
    if choice.mode is ToolChoiceMode.AUTO:
        answer = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}
        return {"anyOf": [call_reply, answer]}
    return call_reply


def reply_format(tools: tuple[Tool, ...], choice: ToolChoice, parallel: bool) -> ResponseFormat:
    return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(reply_schema(tools, choice, parallel)), "tools")


def instructions(tools: tuple[Tool, ...], choice: ToolChoice) -> str:
    described = "\n".join(
        f"- {tool.name}: {tool.description or 'no description'} Arguments (JSON Schema): "
        f"{json.dumps(tool.parameters_schema())}"
        for tool in tools
    )
    if choice.mode is ToolChoiceMode.FUNCTION:
        rule = f'Call the function "{choice.function_name}".'
    elif choice.mode is ToolChoiceMode.REQUIRED:
        rule = "Call one or more of the functions."
    else:
        rule = 'Either call functions, or answer with {"content": "<your answer>"}.'
    return (
        f"You can call these functions:\n{described}\n{rule} "
        'To call functions, reply with {"tool_calls": [{"name": "<function>", "arguments": {...}}]}. '
        "Reply with JSON only."
    )


def prepare_messages(
    messages: tuple[ChatMessage, ...], tools: tuple[Tool, ...], choice: ToolChoice
) -> tuple[ChatMessage, ...]:
    """The conversation as the model sees it: tool instructions first, calls and results in the generic format."""
    names = {call.id: call.name for message in messages for call in message.tool_calls}
    prepared: list[ChatMessage] = []
    if tools and choice.mode is not ToolChoiceMode.NONE:
        prepared.append(ChatMessage(Role.SYSTEM, instructions(tools, choice)))
    for message in messages:
        if message.tool_calls:
            calls = [{"name": c.name, "arguments": _parsed(c.arguments)} for c in message.tool_calls]
            prepared.append(ChatMessage(Role.ASSISTANT, json.dumps({"tool_calls": calls})))
        elif message.role is Role.TOOL:
            name = names.get(message.tool_call_id, "a function")
            prepared.append(ChatMessage(Role.TOOL, f"Result of {name}: {message.content}"))
        else:
            prepared.append(message)
    return tuple(prepared)


def parse_reply(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    """(content, tool calls) of a reply produced under `reply_schema`."""
    reply = json.loads(text)
    if "tool_calls" in reply:
        calls = tuple(
            ToolCall(f"call_{uuid.uuid4().hex[:24]}", call["name"], json.dumps(call["arguments"]))
            for call in reply["tool_calls"]
        )
        return "", calls
    return str(reply.get("content", "")), ()


def _parsed(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
