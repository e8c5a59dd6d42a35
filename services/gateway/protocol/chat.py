"""/v1/chat/completions: the request, its one mapping to the inference contract, the whole
response and the stream's chunks."""

from __future__ import annotations

import json
from typing import Any, Literal, Required, TypedDict

from pydantic import BaseModel, Field, model_validator

from services.common.errors import InvalidArgument
from services.gateway.protocol.common import (
    FINISH_NAMES,
    INT32_MAX,
    TOP_LOGPROBS_FIELD,
    ChoiceChunks,
    ChoiceOut,
    FinishName,
    OpenAIModel,
    ReplyOut,
    ResponseFormatIn,
    SamplingFields,
    UsageOut,
    tool_choice,
)
from services.inference.api import (
    ChatMessage,
    ChatRequest,
    Completed,
    Image,
    ResponseFormat,
    Role,
    StreamEvent,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
)

_ROLES: dict[str, Role] = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,  # OpenAI's newer name for system instructions
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIModel):
    url: str = Field(min_length=1)


class ImagePart(OpenAIModel):
    type: Literal["image_url"]
    image_url: ImageURL


class OtherPart(OpenAIModel):
    type: str


class FunctionCallIn(OpenAIModel):
    name: str
    arguments: str = "{}"


class ToolCallIn(OpenAIModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart | OtherPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def to_domain(self, index: int) -> ChatMessage:
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ())
        if not isinstance(self.content, list):
            return ChatMessage(
                role=_ROLES[self.role],
                content=self.content or "",
                name=self.name or "",
                tool_calls=calls,
                tool_call_id=self.tool_call_id or "",
            )
        for part in self.content:
            if not isinstance(part, TextPart | ImagePart):
                raise InvalidArgument(
                    f"Content parts of type '{part.type}' are not supported; send text and image_url parts.",
                    param=f"messages.{index}.content",
                )
        return ChatMessage(
            role=_ROLES[self.role],
            content="".join(part.text for part in self.content if isinstance(part, TextPart)),
            name=self.name or "",
            images=tuple(Image(url=p.image_url.url) for p in self.content if isinstance(p, ImagePart)),
            tool_calls=calls,
            tool_call_id=self.tool_call_id or "",
        )


class FunctionIn(OpenAIModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(OpenAIModel):
    type: Literal["function"]
    function: FunctionIn

    def to_domain(self) -> Tool:
        parameters = json.dumps(self.function.parameters) if self.function.parameters is not None else ""
        return Tool(self.function.name, self.function.description or "", parameters)


class NamedFunction(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: NamedFunction

    def function_name(self) -> str:
        return self.function.name


class ChatCompletionRequest(SamplingFields):
    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    tools: list[ToolIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormatIn | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = TOP_LOGPROBS_FIELD

    @model_validator(mode="after")
    def _newer_max_tokens_name(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self

    def to_domain(self, max_choices: int) -> list[ChatRequest]:
        """One inference request per choice (`n`)."""
        self.reject_unsupported(max_choices)
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidArgument("'top_logprobs' requires 'logprobs': true.", param="top_logprobs")
        messages = tuple(m.to_domain(i) for i, m in enumerate(self.messages))
        sampling = self.sampling()
        return [
            ChatRequest(
                model=self.model,
                messages=messages,
                sampling=sampling,
                response_format=self.response_format.to_domain() if self.response_format else ResponseFormat(),
                tools=tuple(tool.to_domain() for tool in self.tools or ()),
                tool_choice=tool_choice(self.tool_choice),
                parallel_tool_calls=self.parallel_tool_calls,
                cache=self.cache,
                adapter=self.adapter_settings.adapter_id if self.adapter_settings else "",
                adapter_scale=self.adapter_settings.scale if self.adapter_settings else 1.0,
                logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            )
            for _ in range(self.n)
        ]


class FunctionDeltaOut(TypedDict, total=False):
    name: str
    arguments: str


class ToolCallDeltaOut(TypedDict, total=False):
    """A piece of a streamed call: the first has its `id`, `type` and `function.name`."""

    index: Required[int]
    id: str
    type: Literal["function"]
    function: Required[FunctionDeltaOut]


class ChatDelta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str
    tool_calls: list[ToolCallDeltaOut]


class ChatChunkChoice(TypedDict):
    index: int
    delta: ChatDelta
    finish_reason: FinishName | None
    logprobs: dict[str, Any] | None


def tool_call_deltas(calls: tuple[ToolCall, ...]) -> list[ToolCallDeltaOut]:
    """Whole calls (from backends that send them so) as one delta each."""
    return [
        {"index": i, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for i, call in enumerate(calls)
    ]


def tool_call_delta(delta: ToolCallDelta) -> ToolCallDeltaOut:
    if delta.name:
        function: FunctionDeltaOut = {"name": delta.name, "arguments": delta.arguments}
        return {"index": delta.index, "id": delta.id, "type": "function", "function": function}
    return {"index": delta.index, "function": {"arguments": delta.arguments}}


class FunctionOut(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionOut


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None  # OpenAI sends null: strictly generated clients require the key
    tool_calls: list[ToolCallOut] | None = Field(None, exclude_if=lambda calls: calls is None)


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut]


class ChatLogprobsOut(BaseModel):
    content: list[TokenLogprobOut]
    refusal: None = None


def chat_logprobs(logprobs: tuple[TokenLogprob, ...]) -> ChatLogprobsOut:
    def top(entry: TokenLogprob) -> TopLogprobOut:
        return TopLogprobOut(token=entry.token, logprob=entry.logprob, bytes=list(entry.token_bytes))

    return ChatLogprobsOut(
        content=[TokenLogprobOut(**dict(top(t)), top_logprobs=[top(a) for a in t.top]) for t in logprobs]
    )


class ChatChoice(ChoiceOut):
    message: ChatCompletionMessage
    logprobs: ChatLogprobsOut | None = None


class ChatCompletion(ReplyOut):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


def chat_completion_body(
    completion_id: str, model: str, replies: list[Completed], usage: UsageOut, logprobs: bool = False
) -> ChatCompletion:
    def message(text: str, calls: tuple[ToolCall, ...]) -> ChatCompletionMessage:
        if calls:
            tool_calls = [ToolCallOut(id=c.id, function=FunctionOut(name=c.name, arguments=c.arguments)) for c in calls]
            return ChatCompletionMessage(content=None, tool_calls=tool_calls)
        return ChatCompletionMessage(content=text)

    return ChatCompletion(
        id=completion_id,
        model=model,
        choices=[
            ChatChoice(
                index=index,
                message=message(reply.text, reply.tool_calls),
                finish_reason=reply.finish_reason.value,
                logprobs=chat_logprobs(reply.logprobs) if logprobs else None,
            )
            for index, reply in enumerate(replies)
        ],
        usage=usage,
    )


class ChatChunks(ChoiceChunks[ChatChunkChoice]):
    """The stream: each choice's role first, then its tool calls (as deltas, or whole from
    backends that send them so), its text with logprobs, and its finish reason."""

    object = "chat.completion.chunk"

    def __init__(self, completion_id: str, choices: int, include_usage: bool) -> None:
        super().__init__(completion_id, choices, include_usage)
        self.streamed_calls: set[int] = set()  # choices whose calls arrived as deltas

    def chunks(self, event: StreamEvent, first: bool) -> list[list[ChatChunkChoice]]:
        chunk, index = event.chunk, event.index
        roles = [[_choice(i, {"role": "assistant", "content": ""})] for i in range(self.choices_per_prompt)]
        out = roles if first else []
        if chunk.tool_call_deltas:  # OpenAI's shape: id and name first, then argument pieces
            self.streamed_calls.add(index)
            out.append([_choice(index, {"tool_calls": [tool_call_delta(d) for d in chunk.tool_call_deltas]})])
        if chunk.tool_calls and index not in self.streamed_calls:  # a backend that sends them whole
            out.append([_choice(index, {"tool_calls": tool_call_deltas(chunk.tool_calls)})])
        if chunk.text or chunk.finish_reason:
            delta: ChatDelta = {"content": chunk.text} if chunk.text else {}
            logprobs = chat_logprobs(chunk.logprobs).model_dump() if chunk.logprobs else None
            finish = FINISH_NAMES[chunk.finish_reason] if chunk.finish_reason else None
            out.append([_choice(index, delta, finish, logprobs)])
        return out


def _choice(
    index: int, delta: ChatDelta, finish_reason: FinishName | None = None, logprobs: dict[str, Any] | None = None
) -> ChatChunkChoice:
    return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}
