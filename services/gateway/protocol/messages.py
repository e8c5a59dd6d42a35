"""/v1/messages: Anthropic's Messages API, mapped onto the same inference contract as chat
completions (one generation path), and its replies in Anthropic's shape."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, TypedDict

import jiter
from pydantic import Field

from services.common import sampling
from services.common.errors import InvalidArgument
from services.gateway.protocol.common import INT32_MAX, GenerationIn, OpenAIModel
from services.gateway.sse import Named, Payload
from services.inference.api import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    Image,
    Role,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)

StopReasonName = Literal["end_turn", "max_tokens", "tool_use"]
STOP_REASONS: dict[FinishReason, StopReasonName] = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
}


class TextBlock(OpenAIModel):
    type: Literal["text"]
    text: str


class ImageSource(OpenAIModel):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None

    def to_domain(self, param: str) -> Image:
        if self.type == "url" and self.url:
            return Image(url=self.url)
        if self.type == "base64" and self.data and self.media_type:
            return Image(url=f"data:{self.media_type};base64,{self.data}")
        raise InvalidArgument("An image source needs 'url', or 'media_type' and 'data'.", param=param)


class ImageBlock(OpenAIModel):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(OpenAIModel):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=64)
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(OpenAIModel):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False

    def text(self) -> str:
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(block.text for block in self.content if isinstance(block, TextBlock))
        )
        return f"Error: {text}" if self.is_error else text


class OtherBlock(OpenAIModel):
    type: str


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | OtherBlock


class MessageIn(OpenAIModel):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    def to_domain(self, index: int) -> list[ChatMessage]:
        """One chat message; a user turn's tool results become tool messages before it."""
        param = f"messages.{index}.content"
        role = Role.USER if self.role == "user" else Role.ASSISTANT
        if isinstance(self.content, str):
            return [ChatMessage(role, self.content)]
        texts, images, calls, results = [], [], [], []
        for block in self.content:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ImageBlock):
                images.append(block.source.to_domain(param))
            elif isinstance(block, ToolUseBlock) and role is Role.ASSISTANT:
                calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
            elif isinstance(block, ToolResultBlock) and role is Role.USER:
                results.append(ChatMessage(Role.TOOL, block.text(), tool_call_id=block.tool_use_id))
            else:
                raise InvalidArgument(
                    f"Content blocks of type '{block.type}' are not supported in {self.role} turns; send text, "
                    "image, tool_use (assistant) and tool_result (user) blocks.",
                    param=param,
                )
        turn = [ChatMessage(role, "".join(texts), images=tuple(images), tool_calls=tuple(calls))]
        return results + (turn if texts or images or calls or not results else [])


class ToolIn(OpenAIModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})

    def to_domain(self) -> Tool:
        return Tool(self.name, self.description or "", json.dumps(self.input_schema))


class ToolChoiceIn(OpenAIModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False

    def to_domain(self) -> ToolChoice:
        if self.type == "tool":
            if not self.name:
                raise InvalidArgument("tool_choice of type 'tool' needs 'name'.", param="tool_choice.name")
            return ToolChoice(ToolChoiceMode.FUNCTION, self.name)
        return ToolChoice(
            {"auto": ToolChoiceMode.AUTO, "any": ToolChoiceMode.REQUIRED}.get(self.type, ToolChoiceMode.NONE)
        )


class MessagesInput(GenerationIn):
    """What a prompt is made of: the fields /v1/messages and /v1/messages/count_tokens share."""

    model: str = Field(min_length=1)
    messages: list[MessageIn] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None

    def check_tool_results(self) -> None:
        """As Anthropic checks: each assistant turn's tool_use blocks are answered, every one,
        by tool_result blocks in the user turn right after it, and a tool_result answers a
        tool_use of the turn before."""
        asked: list[str] = []
        for index, message in enumerate(self.messages):
            blocks = message.content if isinstance(message.content, list) else []
            answered = [b.tool_use_id for b in blocks if isinstance(b, ToolResultBlock)]
            missing = [call_id for call_id in asked if call_id not in answered]
            unexpected = [call_id for call_id in answered if call_id not in asked]
            if missing or unexpected:
                problem = (
                    f"`tool_use` ids were found without `tool_result` blocks immediately after: {_ids(missing)}. "
                    "Each `tool_use` block must have a corresponding `tool_result` block in the next message."
                    if missing
                    else f"unexpected `tool_use_id` found in `tool_result` blocks: {_ids(unexpected)}. Each "
                    "`tool_result` block must have a corresponding `tool_use` block in the previous message."
                )
                raise InvalidArgument(f"messages.{index}: {problem}", param=f"messages.{index}.content")
            asked = [b.id for b in blocks if isinstance(b, ToolUseBlock)] if message.role == "assistant" else []

    def to_domain(self, sampling: SamplingParams | None = None) -> ChatRequest:
        self.check_tool_results()
        system = self.system if isinstance(self.system, str) else "".join(b.text for b in self.system or ())
        messages = [ChatMessage(Role.SYSTEM, system)] if system else []
        for index, message in enumerate(self.messages):
            messages += message.to_domain(index)
        choice = self.tool_choice.to_domain() if self.tool_choice else ToolChoice()
        return ChatRequest(
            model=self.model,
            messages=tuple(messages),
            sampling=sampling or SamplingParams(),
            tools=tuple(tool.to_domain() for tool in self.tools or ()),
            tool_choice=choice,
            parallel_tool_calls=not (self.tool_choice and self.tool_choice.disable_parallel_tool_use),
        )


def _ids(ids: list[str]) -> str:
    """A few ids, each cut short: an error never quotes unbounded input."""
    shown = ", ".join(call_id[:64] for call_id in ids[:4])
    return shown + (f" (and {len(ids) - 4} more)" if len(ids) > 4 else "")


class MessagesRequest(MessagesInput):
    max_tokens: int = Field(ge=1, le=INT32_MAX)  # required, as Anthropic requires it
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0.0, le=1.0)  # Anthropic's range
    top_p: float | None = sampling.BOUNDS["top_p"].field()
    top_k: int | None = sampling.BOUNDS["top_k"].field()
    stream: bool = False

    def chat_request(self) -> ChatRequest:
        stop = tuple(self.stop_sequences or ())
        params = SamplingParams(self.temperature, self.top_p, self.top_k, max_tokens=self.max_tokens, stop=stop)
        return self.to_domain(params.validate())


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as Anthropic's `input` object (grammar-constrained output is an object).
    A call cut at max_tokens has its arguments so far: read as Anthropic's SDK reads them
    streamed (complete values only), so a whole reply and a stream agree."""
    try:
        parsed = jiter.from_json((arguments or "{}").encode(), partial_mode=True)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


# The answer, in the shapes of Anthropic's API reference (dicts, as one is made per token).


class TextBlockOut(TypedDict):
    type: Literal["text"]
    text: str


class ToolUseBlockOut(TypedDict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class UsageOut(TypedDict):
    input_tokens: int
    output_tokens: int


class MessageOut(TypedDict):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[TextBlockOut | ToolUseBlockOut]
    stop_reason: StopReasonName | None
    stop_sequence: str | None
    usage: UsageOut


def usage_body(usage: Usage) -> UsageOut:
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}


class MessageBlocks:
    """A message's content blocks, one open at a time, numbered from 0 (a `Writer`). A whole
    reply is the same walk (`Completed` replayed), ending in `message`: both answers agree."""

    def __init__(self, message_id: str) -> None:
        # As a stream's first event shows it: no content, no stop reason yet, and the prompt's
        # tokens (known before generation, as Anthropic sends them).
        self.message: MessageOut = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": "",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        self.open: TextBlockOut | ToolUseBlockOut | None = None  # the block being written
        self.partial_json = ""  # the open tool_use block's input, as generated

    def start(self, model: str, usage: Usage | None) -> list[Payload]:
        self.message["model"] = model
        self.message["usage"]["input_tokens"] = usage.prompt_tokens if usage else 0
        started = {**self.message, "content": [], "usage": dict(self.message["usage"])}  # a snapshot
        return [Named("message_start", {"type": "message_start", "message": started})]

    def text(self, text: str) -> list[Payload]:
        events: list[Payload] = []
        if self.open is None or self.open["type"] != "text":
            events = self._open({"type": "text", "text": ""})
        assert self.open is not None and self.open["type"] == "text"
        self.open["text"] += text
        return [*events, self._delta({"type": "text_delta", "text": text})]

    def call(self, call_id: str, name: str) -> list[Payload]:
        return self._open({"type": "tool_use", "id": call_id, "name": name, "input": {}})

    def arguments(self, piece: str) -> list[Payload]:
        self.partial_json += piece
        return [self._delta({"type": "input_json_delta", "partial_json": piece})]

    async def end(self, finish: FinishReason, usage: Usage) -> AsyncIterator[Payload]:
        for named in self._close():
            yield named
        stop_reason = STOP_REASONS.get(finish, "end_turn")
        self.message["stop_reason"], self.message["usage"] = stop_reason, usage_body(usage)
        delta = {"stop_reason": stop_reason, "stop_sequence": None}
        yield Named("message_delta", {"type": "message_delta", "delta": delta, "usage": usage_body(usage)})
        yield Named("message_stop", {"type": "message_stop"})

    def _open(self, block: TextBlockOut | ToolUseBlockOut) -> list[Payload]:
        events = self._close()
        index = len(self.message["content"])
        start = {"type": "content_block_start", "index": index, "content_block": dict(block)}
        self.open, self.partial_json = block, ""
        return [*events, Named("content_block_start", start)]

    def _delta(self, delta: dict[str, str]) -> Named:
        index = len(self.message["content"])
        return Named("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def _close(self) -> list[Payload]:
        if self.open is None:
            return []
        if self.open["type"] == "tool_use":
            self.open["input"] = tool_input(self.partial_json)
        index = len(self.message["content"])
        self.message["content"].append(self.open)
        self.open = None
        return [Named("content_block_stop", {"type": "content_block_stop", "index": index})]
