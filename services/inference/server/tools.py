"""Tool calling on any model that can be held to a JSON schema, in the model's own syntax
where its chat template has one.

Three syntaxes:

- `hermes`, the syntax of ChatML-family models (Qwen 2.5, Hermes, ...): the tools are
  listed in the system prompt inside <tools></tools>, each call is a block

      <tool_call>
      {"name": "get_weather", "arguments": {"city": "Paris"}}
      </tool_call>

  and tool results come back in <tool_response></tool_response>.
- `llama3_json`, Llama 3.1's JSON tool calling: the functions are listed in the
  system prompt, a call is one object {"name": ..., "parameters": {...}}, and its
  result comes back in an `ipython` turn. One call per reply.
- `generic`, for models whose template has no tool syntax (Gemma 3 270M is one): the
  tools are described in a system message and the reply is one JSON object,
  {"tool_calls": [{"name": ..., "arguments": {...}}]} or, when the model may answer
  instead (tool_choice auto), {"content": "..."}.

Either way decoding is constrained, so every call names a real tool and its arguments
validate against that tool's parameters. A backend that cannot frame JSON between
literal text (see `Backend.supports_framed_output`) gets the generic syntax.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from services.inference.api import (
    ChatMessage,
    OutputFrame,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
)

MAX_PARALLEL = 4


def _offered(tools: tuple[Tool, ...], choice: ToolChoice) -> list[Tool]:
    return [t for t in tools if choice.mode is not ToolChoiceMode.FUNCTION or t.name == choice.function_name]


def call_schema(tools: tuple[Tool, ...], choice: ToolChoice) -> dict[str, Any]:
    """The schema of one call: a named tool with arguments that validate against its parameters."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters_schema()},
            "required": ["name", "arguments"],
        }
        for tool in _offered(tools, choice)
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def max_calls(choice: ToolChoice, parallel: bool) -> int:
    # Parallel calls are capped: a small model left unbounded repeats calls until max_tokens.
    # A named function is called once, as forcing one function means.
    return 1 if not parallel or choice.mode is ToolChoiceMode.FUNCTION else MAX_PARALLEL


def _function_json(tool: Tool) -> str:
    """A tool as OpenAI's function definition, the shape model templates show tools in."""
    function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters_schema()}
    return json.dumps({"type": "function", "function": function})


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


class ToolSyntax:
    """How tools, calls and results are written for the model, and how its reply is read."""

    name: ClassVar[str]

    def reply_format(self, tools: tuple[Tool, ...], choice: ToolChoice, parallel: bool) -> ResponseFormat:
        raise NotImplementedError

    def prepare_messages(
        self, messages: tuple[ChatMessage, ...], tools: tuple[Tool, ...], choice: ToolChoice
    ) -> tuple[ChatMessage, ...]:
        raise NotImplementedError

    def reader(self) -> ReplyReader:
        raise NotImplementedError


class GenericSyntax(ToolSyntax):
    name = "generic"

    def reply_format(self, tools: tuple[Tool, ...], choice: ToolChoice, parallel: bool) -> ResponseFormat:
        limit = max_calls(choice, parallel)
        array = {"type": "array", "items": call_schema(tools, choice), "minItems": 1, "maxItems": limit}
        schema: dict[str, Any] = {"type": "object", "properties": {"tool_calls": array}, "required": ["tool_calls"]}
        if choice.mode is ToolChoiceMode.AUTO:
            answer = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}
            schema = {"anyOf": [schema, answer]}
        return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(schema), "tools")

    def prepare_messages(
        self, messages: tuple[ChatMessage, ...], tools: tuple[Tool, ...], choice: ToolChoice
    ) -> tuple[ChatMessage, ...]:
        names = {call.id: call.name for message in messages for call in message.tool_calls}
        prepared: list[ChatMessage] = []
        if tools and choice.mode is not ToolChoiceMode.NONE:
            prepared.append(ChatMessage(Role.SYSTEM, self._instructions(tools, choice)))
        for message in messages:
            if message.tool_calls:
                calls = [{"name": c.name, "arguments": _arguments(c.arguments)} for c in message.tool_calls]
                prepared.append(ChatMessage(Role.ASSISTANT, json.dumps({"tool_calls": calls})))
            elif message.role is Role.TOOL:
                name = names.get(message.tool_call_id, "a function")
                prepared.append(ChatMessage(Role.TOOL, f"Result of {name}: {message.content}"))
            else:
                prepared.append(message)
        return tuple(prepared)

    @staticmethod
    def _instructions(tools: tuple[Tool, ...], choice: ToolChoice) -> str:
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

    def reader(self) -> ReplyReader:
        return ReplyReader(CallScanner(call_depth=3), content_of=_generic_content, prose_key="content")


def _generic_content(text: str) -> str:
    reply = json.loads(text)
    return str(reply.get("content", "")) if "tool_calls" not in reply else ""


class HermesSyntax(ToolSyntax):
    name = "hermes"
    OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"

    def reply_format(self, tools: tuple[Tool, ...], choice: ToolChoice, parallel: bool) -> ResponseFormat:
        frame = OutputFrame(
            open=self.OPEN,
            close=self.CLOSE,
            separator="\n",
            max_items=max_calls(choice, parallel),
            allow_text=choice.mode is ToolChoiceMode.AUTO,
        )
        return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(call_schema(tools, choice)), "tools", frame)

    def prepare_messages(
        self, messages: tuple[ChatMessage, ...], tools: tuple[Tool, ...], choice: ToolChoice
    ) -> tuple[ChatMessage, ...]:
        prepared: list[ChatMessage] = []
        rest = list(messages)
        if tools and choice.mode is not ToolChoiceMode.NONE:
            system = ""
            if rest and rest[0].role is Role.SYSTEM:
                system = rest.pop(0).content + "\n\n"
            prepared.append(ChatMessage(Role.SYSTEM, system + self._instructions(tools, choice)))
        for message in rest:
            if message.tool_calls:
                blocks = [
                    self.OPEN + json.dumps({"name": c.name, "arguments": _arguments(c.arguments)}) + self.CLOSE
                    for c in message.tool_calls
                ]
                text = (message.content + "\n" if message.content else "") + "\n".join(blocks)
                prepared.append(ChatMessage(Role.ASSISTANT, text))
            elif message.role is Role.TOOL:
                # Qwen's template: tool results are user turns wrapped in <tool_response>.
                prepared.append(ChatMessage(Role.USER, f"<tool_response>\n{message.content}\n</tool_response>"))
            else:
                prepared.append(message)
        return tuple(prepared)

    @staticmethod
    def _instructions(tools: tuple[Tool, ...], choice: ToolChoice) -> str:
        signatures = "\n".join(_function_json(tool) for tool in tools)
        if choice.mode is ToolChoiceMode.FUNCTION:
            rule = f"\n\nYou must call the function {choice.function_name}."
        elif choice.mode is ToolChoiceMode.REQUIRED:
            rule = "\n\nYou must call at least one function."
        else:
            rule = ""
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{signatures}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' + rule
        )

    def reader(self) -> ReplyReader:
        return ReplyReader(CallScanner(call_depth=1), content_of=_hermes_content, text_start="<")


class Llama3JsonSyntax(ToolSyntax):
    name = "llama3_json"

    def reply_format(self, tools: tuple[Tool, ...], choice: ToolChoice, parallel: bool) -> ResponseFormat:
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "parameters": tool.parameters_schema()},
                "required": ["name", "parameters"],
            }
            for tool in _offered(tools, choice)
        ]
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        # A bare object: no literal text around it; with auto, prose that does not start with "{".
        frame = OutputFrame(open="", close="", allow_text=choice.mode is ToolChoiceMode.AUTO)
        return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(schema), "tools", frame)

    def prepare_messages(
        self, messages: tuple[ChatMessage, ...], tools: tuple[Tool, ...], choice: ToolChoice
    ) -> tuple[ChatMessage, ...]:
        prepared: list[ChatMessage] = []
        rest = list(messages)
        if tools and choice.mode is not ToolChoiceMode.NONE:
            system = rest.pop(0).content + "\n\n" if rest and rest[0].role is Role.SYSTEM else ""
            functions = "\n\n".join(_function_json(tool) for tool in tools)
            rule = f" Call {choice.function_name}." if choice.mode is ToolChoiceMode.FUNCTION else ""
            prepared.append(
                ChatMessage(
                    Role.SYSTEM,
                    system + "Given the following functions, please respond with a JSON for a function call with its"
                    " proper arguments that best answers the given prompt.\n\nRespond in the format"
                    ' {"name": function name, "parameters": dictionary of argument name and its value}.'
                    f" Do not use variables.{rule}\n\n{functions}",
                )
            )
        for message in rest:
            if message.tool_calls:
                call = message.tool_calls[0]
                prepared.append(
                    ChatMessage(
                        Role.ASSISTANT, json.dumps({"name": call.name, "parameters": _arguments(call.arguments)})
                    )
                )
            else:
                prepared.append(message)  # tool results: the llama3 template renders them as ipython turns
        return tuple(prepared)

    def reader(self) -> ReplyReader:
        return ReplyReader(
            CallScanner(call_depth=1, arguments_key="parameters"), content_of=lambda _: "", text_start="{"
        )


_HERMES_BLOCK = re.compile(r"<tool_call>\n.*?\n</tool_call>", re.DOTALL)


def _hermes_content(text: str) -> str:
    return _HERMES_BLOCK.sub("", text).strip()


SYNTAXES: dict[str, ToolSyntax] = {
    syntax.name: syntax for syntax in (GenericSyntax(), HermesSyntax(), Llama3JsonSyntax())
}
# Which syntax a builtin chat template implies.
TEMPLATE_SYNTAX = {"chatml": "hermes", "llama3": "llama3_json"}


def syntax_for(chat_template: str | None, configured: str | None, framed_output: bool) -> ToolSyntax:
    """The model's own syntax (configured, or implied by its template) if its backend can
    enforce it, else the generic one."""
    name = configured or TEMPLATE_SYNTAX.get(chat_template or "", "generic")
    if name != "generic" and not framed_output:
        name = "generic"
    return SYNTAXES[name]


@dataclass
class CallScanner:
    """Finds the calls, {"name": ..., "arguments": ...} objects at `call_depth`, in JSON text
    that arrives a piece at a time, so that arguments can be streamed as they are generated."""

    call_depth: int
    arguments_key: str = "arguments"
    calls: list[dict[str, Any]] = field(default_factory=list)
    _text: str = ""
    _position: int = 0
    _depth: int = 0
    _in_string: bool = False
    _escaped: bool = False
    _string_start: int = 0
    _last_string: str = ""
    _key: str | None = None
    _in_value: bool = False  # between a call key's colon and the next comma
    _current: dict[str, Any] | None = None

    def feed(self, text: str) -> Iterator[ToolCallDelta]:
        self._text += text
        while self._position < len(self._text):
            yield from self._step(self._text[self._position])
            self._position += 1
        yield from self._flush_arguments()

    def _step(self, char: str) -> Iterator[ToolCallDelta]:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
                self._last_string = json.loads(self._text[self._string_start : self._position + 1])
                at_call = self._depth == self.call_depth and self._in_value
                if at_call and self._key == "name" and self._current is not None:
                    self._current["name"] = self._last_string
                    yield ToolCallDelta(self._current["index"], self._current["id"], self._last_string, "")
                    yield from self._flush_arguments()
            return
        if char == '"':
            self._in_string, self._string_start = True, self._position
        elif char in "{[":
            self._depth += 1
            if self._depth == self.call_depth and char == "{":
                self._current = {"index": len(self.calls), "id": new_call_id(), "name": None, "emitted": 0}
                self.calls.append(self._current)
                self._key, self._in_value = None, False
            elif self._depth == self.call_depth + 1 and self._key == self.arguments_key and self._current is not None:
                self._current["start"] = self._position
        elif char in "}]":
            if self._depth == self.call_depth + 1 and self._key == self.arguments_key and self._current is not None:
                self._current["end"] = self._position + 1
                yield from self._flush_arguments()
            self._depth -= 1
        elif char == ":" and self._depth == self.call_depth:
            self._key, self._in_value = self._last_string, True
        elif char == "," and self._depth == self.call_depth:
            self._in_value = False

    def _flush_arguments(self) -> Iterator[ToolCallDelta]:
        """The arguments text generated since the last flush, once the call's name is known."""
        call = self._current
        if call is None or call["name"] is None or "start" not in call:
            return
        end = call.get("end", self._position)
        start = call["start"] + call["emitted"]
        if end > start:
            call["emitted"] = end - call["start"]
            yield ToolCallDelta(call["index"], call["id"], "", self._text[start:end])

    def tool_calls(self, cut: bool = False) -> tuple[ToolCall, ...]:
        """The whole calls; `cut` (the reply stopped at max_tokens): also the last one as far as
        it was generated, named, with its arguments so far, as its deltas streamed it."""
        return tuple(
            ToolCall(call["id"], call["name"], self._text[call["start"] : call.get("end", self._position)])
            if "start" in call
            else ToolCall(call["id"], call["name"], "")
            for call in self.calls
            if call["name"] is not None and ("end" in call or cut)
        )


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonStringReader:
    """The decoded text of a JSON string as its raw text arrives, up to its closing quote;
    an escape sequence split between pieces (a surrogate pair's two halves included) waits
    for its end."""

    ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}(?:\\u[0-9a-fA-F]{4})?|[^u])")
    LOW_HALF_SO_FAR = re.compile(r"(?:\\(?:u[0-9a-fA-F]{0,3})?)?")

    def __init__(self, start: int) -> None:
        self.position = start  # in the reply's text: the first character not yet decoded
        self.closed = False

    def read(self, text: str) -> str:
        decoded, index = [], self.position
        while index < len(text) and not self.closed:
            char = text[index]
            if char == '"':
                self.closed = True
                index += 1
            elif char == "\\":
                escape = self.ESCAPE.match(text, index)
                if escape is None or self._awaits_low_half(escape.group(), text[escape.end() :]):
                    break  # the rest of the escape is still to come
                decoded.append(json.loads(f'"{escape.group()}"'))
                index = escape.end()
            else:
                decoded.append(char)
                index += 1
        self.position = index
        # A lone surrogate (the model wrote half a pair) cannot be sent as UTF-8.
        return LONE_SURROGATE.sub("\ufffd", "".join(decoded))

    def _awaits_low_half(self, escape: str, rest: str) -> bool:
        high = len(escape) == 6 and 0xD800 <= int(escape[2:], 16) <= 0xDBFF
        return high and len(rest) < 6 and self.LOW_HALF_SO_FAR.fullmatch(rest) is not None


@dataclass
class ReplyReader:
    """Reads a tool-aware reply as it streams: call deltas as soon as they are generated, and
    prose as it is generated: plain text when the syntax lets the model answer in prose
    (`text_start`: what a reply of calls begins with), or the string of a JSON answer
    {"<prose_key>": "..."}, decoded as it arrives."""

    scanner: CallScanner
    content_of: Any
    text_start: str | None = None
    prose_key: str | None = None
    _text: str = ""
    _prose: bool | None = None
    _prose_string: JsonStringReader | None = None

    def feed(self, text: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """(prose to pass on, call deltas) for the next piece of the reply."""
        self._text += text
        if self._prose is None and self.text_start is not None and self._text.strip():
            self._prose = not self._text.lstrip().startswith(self.text_start)
        if self._prose:
            return text, ()
        if self.prose_key is not None and self._prose_string is None:
            opening = re.match(rf'\s*\{{\s*"{self.prose_key}"\s*:\s*"', self._text)
            if opening is not None:
                self._prose_string = JsonStringReader(opening.end())
        if self._prose_string is not None:
            return self._prose_string.read(self._text), ()
        return "", tuple(self.scanner.feed(text))

    def finish(self, cut: bool = False) -> tuple[str, tuple[ToolCall, ...]]:
        """(content held back, calls) once the reply ends; `cut`: at max_tokens, when the calls
        are those generated so far, the last one possibly unfinished."""
        if self._prose or self._prose_string is not None:
            return "", ()
        calls = self.scanner.tool_calls(cut)
        return ("", calls) if calls or cut else (self.content_of(self._text), ())
