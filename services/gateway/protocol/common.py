"""What the generating endpoints share: the base model, the mesh's `node` extension and the input
caps, OpenAI's sampling fields, response formats, tool choice, usage, ids, and the walk of an
OpenAI chunk stream over n choices."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar, Generic, Literal, NotRequired, Protocol, TypedDict, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from services.common import sampling
from services.common.errors import InvalidArgument
from services.gateway.config import GatewaySettings
from services.gateway.sse import Comment, wait_comment
from services.inference.api import (
    MAX_TOP_LOGPROBS,
    FinishReason,
    ResponseFormat,
    ResponseFormatKind,
    SamplingParams,
    StreamEvent,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)

# Bounds of the protobuf integer fields these values travel in: larger ones are a 400, not a crash.
INT32_MAX, INT64_MIN, INT64_MAX = sampling.INT32_MAX, sampling.INT64_MIN, sampling.INT64_MAX


class OpenAIModel(BaseModel):
    # Unknown fields are ignored, as vLLM does: SDKs and frameworks send extras.
    model_config = ConfigDict(extra="ignore")


class GenerationIn(OpenAIModel):
    """What every generating request shares (each API family's own): the mesh's `node` extension,
    and the configured input caps, answered with 400 before anything reaches a backend."""

    # mesh extension: the fleet node that must answer (also written `model@node`)
    node: str | None = Field(None, min_length=1, max_length=64)

    max_tokens_param: ClassVar[str] = "max_tokens"  # the family's name for the output cap
    turns_param: ClassVar[str] = "messages"  # and for the conversation's turns
    turns_noun: ClassVar[str] = "messages"

    def check_limits(self, settings: GatewaySettings) -> None:
        max_tokens = getattr(self, self.max_tokens_param, None)
        if max_tokens is not None and max_tokens > settings.max_tokens_cap:
            raise InvalidArgument(
                f"'{self.max_tokens_param}' must be at most {settings.max_tokens_cap}; got {max_tokens}.",
                param=self.max_tokens_param,
            )
        turns = getattr(self, self.turns_param, None)
        if isinstance(turns, list) and len(turns) > settings.max_messages:
            raise InvalidArgument(
                f"At most {settings.max_messages} {self.turns_noun} per request; got {len(turns)}.",
                param=self.turns_param,
            )


class NamedChoice(Protocol):
    def function_name(self) -> str: ...


def tool_choice(choice: Literal["none", "auto", "required"] | NamedChoice | None) -> ToolChoice:
    """OpenAI's `tool_choice` (chat and Responses spell the named function differently)."""
    if choice is None:
        return ToolChoice()
    if isinstance(choice, str):
        return ToolChoice(ToolChoiceMode(choice))
    return ToolChoice(ToolChoiceMode.FUNCTION, choice.function_name())


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class JsonSchemaIn(OpenAIModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None

    def to_domain(self) -> ResponseFormat:
        if self.type == "json_schema":
            if self.json_schema is None:
                raise InvalidArgument("response_format json_schema needs 'json_schema'.", param="response_format")
            schema = json.dumps(self.json_schema.schema_)
            return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, schema, self.json_schema.name)
        return ResponseFormat(ResponseFormatKind(self.type))


class AdapterSettingsIn(OpenAIModel):
    """The design documents' `adapter_settings`: which LoRA adapter answers the request."""

    adapter_id: str = Field(min_length=1, max_length=128)
    scale: float = Field(1.0, ge=0.0, le=2.0, description="1.0 as trained; 0 the base alone")


class SamplingFields(GenerationIn):
    """Sampling parameters shared by chat and completions, with OpenAI's bounds."""

    # Bounds from their one declaration (services/common/sampling.py).
    temperature: float | None = sampling.BOUNDS["temperature"].field()
    top_p: float | None = sampling.BOUNDS["top_p"].field()
    max_tokens: int | None = sampling.BOUNDS["max_tokens"].field()
    stop: str | list[str] | None = None
    seed: int | None = sampling.seed_field()
    presence_penalty: float | None = sampling.BOUNDS["presence_penalty"].field()
    frequency_penalty: float | None = sampling.BOUNDS["frequency_penalty"].field()
    n: int = Field(1, ge=1, le=INT32_MAX)
    # mesh extensions: the response cache for this request (deterministic requests only),
    # and the LoRA adapter that answers it
    cache: bool | None = None
    adapter_settings: AdapterSettingsIn | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions, named as in vLLM and llama.cpp's server.
    top_k: int | None = sampling.BOUNDS["top_k"].field()
    min_p: float | None = sampling.BOUNDS["min_p"].field()
    repeat_penalty: float | None = sampling.BOUNDS["repeat_penalty"].field()
    # Not supported yet; rejected when set rather than ignored.
    logit_bias: dict[str, float] | None = None

    def sampling(self) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        scalars = {name: getattr(self, name) for name in sampling.NAMES if name != "stop"}
        return SamplingParams(**scalars, stop=stop).validate()

    def reject_unsupported(self, max_choices: int) -> None:
        if self.n > max_choices:
            raise InvalidArgument(f"'n' must be at most {max_choices}; got {self.n}.", param="n")
        if self.logit_bias:
            raise InvalidArgument("'logit_bias' is not supported yet.", param="logit_bias")

    @property
    def include_usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


# The most alternatives per token `top_logprobs` (chat) and `logprobs` (completions) may ask for.
TOP_LOGPROBS_FIELD = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# OpenAPI: with "stream": true the same operation answers with server-sent events instead.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string", "description": "data: {chunk}"}}}}
}


FinishName = Literal["stop", "length", "tool_calls", "content_filter"]
FINISH_NAMES: dict[FinishReason, FinishName] = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
}


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens served from a cache


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


def usage_body(usages: list[Usage], choices_per_prompt: int) -> UsageOut:
    """Usage of all choices, in choice order: each prompt counts once, completions add up."""
    prompt_tokens = sum(u.prompt_tokens for u in usages[::choices_per_prompt])
    completion_tokens = sum(u.completion_tokens for u in usages)
    cached = sum(u.cached_prompt_tokens for u in usages[::choices_per_prompt])
    return UsageOut(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


class ChoiceOut(BaseModel):
    """What every choice of a whole reply has (each reply adds its own `logprobs` shape)."""

    index: int
    finish_reason: FinishName


class ReplyOut(BaseModel):
    """What every whole (non-streamed) reply has, in OpenAI's shape and field order (each
    reply narrows `object` and `choices`)."""

    id: str
    object: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: Sequence[ChoiceOut]
    usage: UsageOut


ChoiceT = TypeVar("ChoiceT")


class ChunkOut(TypedDict, Generic[ChoiceT]):
    """A streamed chunk object (chat's `chat.completion.chunk`, completions' `text_completion`):
    a dict, since one is made per token, typed all the same."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChoiceT]
    usage: NotRequired[dict[str, Any] | None]  # with stream_options.include_usage only


class ChoiceChunks(Generic[ChoiceT]):
    """An OpenAI stream of chunk objects over n choices, the walk that chat and text completions
    share: waits become SSE comments, each choice's usage is kept, the caller is told what it used
    however the stream ends, and the usage chunk closes it when asked for. Each family says what
    chunks one event makes (`chunks`) and how a choice entry looks (`ChoiceT`)."""

    object: ClassVar[str]

    def __init__(self, completion_id: str, choices_per_prompt: int, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.choices_per_prompt = choices_per_prompt
        self.include_usage = include_usage
        self.created = int(time.time())
        self.model = ""

    def chunks(self, event: StreamEvent, first: bool) -> list[list[ChoiceT]]:
        """The `choices` list of each chunk that `event` makes; `first`: the stream's first event."""
        raise NotImplementedError

    def chunk(self, choices: list[ChoiceT], usage: dict[str, Any] | None = None) -> ChunkOut[ChoiceT]:
        body: ChunkOut[ChoiceT] = {
            "id": self.completion_id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:  # OpenAI sends usage: null on every chunk but the last when usage is asked for
            body["usage"] = usage
        return body

    async def stream(
        self, events: AsyncIterator[StreamEvent], caller_used: Callable[[int, int], None]
    ) -> AsyncIterator[ChunkOut[ChoiceT] | Comment]:
        usages: dict[int, Usage] = {}
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    if wait := event.chunk.wait_status:
                        yield wait_comment(wait.state.value, wait.model, wait.position)
                        continue
                    first = not self.model
                    self.model = event.model
                    for choices in self.chunks(event, first):
                        yield self.chunk(choices)
                    if event.chunk.usage:
                        usages[event.index] = event.chunk.usage
        finally:  # also when the stream ends early: what the finished choices used
            caller_used(
                sum(u.prompt_tokens for u in usages.values()), sum(u.completion_tokens for u in usages.values())
            )
        if self.include_usage:
            usage = usage_body([usages[i] for i in sorted(usages)], self.choices_per_prompt)
            yield self.chunk([], usage.model_dump())
