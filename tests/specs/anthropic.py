"""Anthropic's Messages API shapes, written from its API reference
(https://docs.anthropic.com/en/api/messages, /messages-streaming, /errors): the message, its
content blocks, usage, every stream event, the token count and the error body. Strict: an
unknown field, a missing one or a wrong type fails."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextBlock(Strict):
    type: Literal["text"]
    text: str


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextBlock | ToolUseBlock, Field(discriminator="type")]


class Usage(Strict):
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"]


class Message(Strict):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class MessageStart(Strict):
    type: Literal["message_start"]
    message: Message


class ContentBlockStart(Strict):
    type: Literal["content_block_start"]
    index: int = Field(ge=0)
    content_block: ContentBlock


class TextDelta(Strict):
    type: Literal["text_delta"]
    text: str


class InputJsonDelta(Strict):
    type: Literal["input_json_delta"]
    partial_json: str


class ContentBlockDelta(Strict):
    type: Literal["content_block_delta"]
    index: int = Field(ge=0)
    delta: Annotated[TextDelta | InputJsonDelta, Field(discriminator="type")]


class ContentBlockStop(Strict):
    type: Literal["content_block_stop"]
    index: int = Field(ge=0)


class MessageDeltaBody(Strict):
    stop_reason: StopReason | None
    stop_sequence: str | None


class DeltaUsage(Strict):
    output_tokens: int = Field(ge=0)
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageDelta(Strict):
    type: Literal["message_delta"]
    delta: MessageDeltaBody
    usage: DeltaUsage


class MessageStop(Strict):
    type: Literal["message_stop"]


class Ping(Strict):
    type: Literal["ping"]


class ErrorDetail(Strict):
    type: Literal[
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
    ]
    message: str


class Error(Strict):
    type: Literal["error"]
    error: ErrorDetail


class TokenCount(Strict):
    input_tokens: int = Field(ge=0)


Event = Annotated[
    MessageStart | ContentBlockStart | ContentBlockDelta | ContentBlockStop | MessageDelta | MessageStop | Ping | Error,
    Field(discriminator="type"),
]
EVENT = TypeAdapter(Event)


def check_stream(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Each (event name, data) valid, named as its type, in the documented order: message_start,
    then each block's start, deltas and stop with indexes counting from 0, then message_delta
    and message_stop."""
    parsed = []
    for name, data in events:
        event = EVENT.validate_python(data)
        assert name == event.type, (name, event.type)
        parsed.append(event)
    kinds = [event.type for event in parsed if event.type != "ping"]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"], kinds
    open_index, next_index = None, 0
    for event in parsed:
        if isinstance(event, ContentBlockStart):
            assert open_index is None and event.index == next_index
            open_index, next_index = event.index, next_index + 1
        elif isinstance(event, ContentBlockDelta):
            assert event.index == open_index
        elif isinstance(event, ContentBlockStop):
            assert event.index == open_index
            open_index = None
    assert open_index is None
