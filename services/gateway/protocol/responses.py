"""/v1/responses: OpenAI's Responses API mapped onto the same inference contract as chat
completions, and its replies in the Responses shape. `previous_response_id` continues a stored
conversation (services/gateway/response_store.py)."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from services.common import sampling
from services.common.errors import InvalidArgument
from services.gateway.protocol.common import INT32_MAX, GenerationIn, OpenAIModel, tool_choice
from services.gateway.sse import Named, Payload
from services.inference.api import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    Image,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    Tool,
    ToolCall,
    Usage,
)

_ROLES = {"user": Role.USER, "assistant": Role.ASSISTANT, "system": Role.SYSTEM, "developer": Role.SYSTEM}


class InputText(OpenAIModel):
    type: Literal["input_text", "output_text"]
    text: str


class InputImage(OpenAIModel):
    type: Literal["input_image"]
    image_url: str | None = None


class OtherContent(OpenAIModel):
    type: str


class MessageItem(OpenAIModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText | InputImage | OtherContent]

    def to_domain(self, param: str) -> ChatMessage:
        if isinstance(self.content, str):
            return ChatMessage(_ROLES[self.role], self.content)
        texts, images = [], []
        for part in self.content:
            if isinstance(part, InputText):
                texts.append(part.text)
            elif isinstance(part, InputImage) and part.image_url:
                images.append(Image(url=part.image_url))
            else:
                raise InvalidArgument(
                    f"Content of type '{part.type}' is not supported; send input_text and input_image (by URL).",
                    param=param,
                )
        return ChatMessage(_ROLES[self.role], "".join(texts), images=tuple(images))


class FunctionCallItem(OpenAIModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=64)
    arguments: str = "{}"


class FunctionCallOutputItem(OpenAIModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str


class OtherItem(OpenAIModel):
    type: str


Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | OtherItem


class FunctionTool(OpenAIModel):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def to_domain(self) -> Tool:
        return Tool(self.name, self.description or "", json.dumps(self.parameters) if self.parameters else "")


class NamedFunction(OpenAIModel):
    type: Literal["function"]
    name: str

    def function_name(self) -> str:
        return self.name


class TextFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    def to_domain(self) -> ResponseFormat:
        if self.type == "json_schema":
            if self.schema_ is None:
                raise InvalidArgument("text.format json_schema needs 'schema'.", param="text.format.schema")
            return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(self.schema_), self.name)
        return ResponseFormat(ResponseFormatKind(self.type))


class TextOptions(OpenAIModel):
    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesRequest(GenerationIn):
    max_tokens_param = "max_output_tokens"
    turns_param = "input"
    turns_noun = "input items"

    model: str = Field(min_length=1)
    input: str | list[Item]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool = True
    text: TextOptions | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = sampling.BOUNDS["temperature"].field()
    top_p: float | None = sampling.BOUNDS["top_p"].field()
    stream: bool = False
    previous_response_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,128}$")  # ids this gateway made
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def turns(self, history: tuple[ChatMessage, ...] = ()) -> tuple[ChatMessage, ...]:
        """The conversation: a stored one's messages, then this input's. Instructions are not
        part of it: as in OpenAI's API, each request gives its own."""
        messages = list(history)
        items = [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        for index, item in enumerate(items):
            param = f"input.{index}"
            if isinstance(item, MessageItem):
                messages.append(item.to_domain(param))
            elif isinstance(item, FunctionCallItem):
                call = ToolCall(item.call_id, item.name, item.arguments)
                if messages and messages[-1].role is Role.ASSISTANT and not messages[-1].content:
                    last = messages.pop()  # consecutive calls are one assistant turn
                    messages.append(ChatMessage(Role.ASSISTANT, "", tool_calls=(*last.tool_calls, call)))
                else:
                    messages.append(ChatMessage(Role.ASSISTANT, "", tool_calls=(call,)))
            elif isinstance(item, FunctionCallOutputItem):
                messages.append(ChatMessage(Role.TOOL, item.output, tool_call_id=item.call_id))
            else:
                raise InvalidArgument(
                    f"Input items of type '{item.type}' are not supported; send messages, function_call and "
                    "function_call_output items.",
                    param=param,
                )
        if len(messages) == len(history):
            raise InvalidArgument("'input' must not be empty.", param="input")
        return tuple(messages)

    def to_domain(self, history: tuple[ChatMessage, ...] = ()) -> ChatRequest:
        instructions = (ChatMessage(Role.SYSTEM, self.instructions),) if self.instructions else ()
        return ChatRequest(
            model=self.model,
            messages=instructions + self.turns(history),
            sampling=SamplingParams(self.temperature, self.top_p, max_tokens=self.max_output_tokens).validate(),
            response_format=self.text.format.to_domain() if self.text else ResponseFormat(),
            tools=tuple(tool.to_domain() for tool in self.tools or ()),
            tool_choice=tool_choice(self.tool_choice),
            parallel_tool_calls=self.parallel_tool_calls,
        )


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def input_items(response_id: str, conversation: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    """The turns a stored response was answered from, as Responses items, oldest first. An
    item's id comes from the response's and the item's place, so it is the same on every read
    and `after` can page by it."""
    items: list[dict[str, Any]] = []

    def add(prefix: str, **fields: Any) -> None:
        digest = hashlib.sha256(f"{response_id}/{len(items)}".encode()).hexdigest()[:32]
        items.append({"id": f"{prefix}_{digest}", **fields, "status": "completed"})

    for message in conversation:
        if message.role is Role.TOOL:
            add("fco", type="function_call_output", call_id=message.tool_call_id, output=message.content)
            continue
        if message.content or message.images or not message.tool_calls:
            if message.role is Role.ASSISTANT:
                content = [OutputText(text=message.content).model_dump()]
            else:
                content = [{"type": "input_text", "text": message.content}] if message.content else []
                content += [
                    {"type": "input_image", "image_url": i.as_data_url(), "detail": "auto"} for i in message.images
                ]
            add("msg", type="message", role=message.role.value, content=content)
        for call in message.tool_calls:
            add("fc", type="function_call", call_id=call.id, name=call.name, arguments=call.arguments)
    return items


# The answer, in the Open Responses shape (which OpenAI's Responses API shares).

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] = Field(default_factory=list)  # logprobs are not offered on this API


class MessageOut(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallOut(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


class InputTokensDetails(BaseModel):
    cached_tokens: int
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> ResponseUsage:
        return cls(
            input_tokens=usage.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=usage.cached_prompt_tokens),
            output_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
        )


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ReasoningOut(BaseModel):
    effort: None = None  # no reasoning models here
    summary: None = None


class FormatOut(BaseModel):
    """`text.format` as asked: plain text is only its type."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, exclude_if=lambda value: value is None)
    description: str | None = Field(None, exclude_if=lambda value: value is None)
    schema_: dict[str, Any] | None = Field(None, alias="schema", exclude_if=lambda value: value is None)
    strict: bool | None = Field(None, exclude_if=lambda value: value is None)

    @classmethod
    def of(cls, asked: TextFormat | None) -> FormatOut:
        if asked is None or asked.type != "json_schema":
            return cls(type=asked.type if asked else "text")
        return cls(
            type="json_schema",
            name=asked.name,
            description=asked.description or "",
            schema=asked.schema_,
            strict=bool(asked.strict),
        )


class TextOut(BaseModel):
    format: FormatOut


class ResponseObject(BaseModel):
    """The response resource: created, in progress, and final alike."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["in_progress", "completed", "incomplete"]
    incomplete_details: IncompleteDetails | None = None
    error: None = None  # a failed generation is an error answer (or event), not a response
    model: str
    previous_response_id: str | None
    instructions: str | None
    output: list[MessageOut | FunctionCallOut]
    tools: list[FunctionTool]
    tool_choice: str | dict[str, str]
    truncation: Literal["disabled"] = "disabled"  # too long a conversation is refused, never cut
    parallel_tool_calls: bool
    text: TextOut
    temperature: float
    top_p: float
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int = 0
    reasoning: ReasoningOut = Field(default_factory=ReasoningOut)
    usage: ResponseUsage | None = None
    max_output_tokens: int | None
    max_tool_calls: int | None = None
    store: bool
    background: bool = False
    service_tier: Literal["default"] = "default"
    metadata: dict[str, str]
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    @classmethod
    def started(cls, response_id: str, body: ResponsesRequest, model: str, store: bool) -> ResponseObject:
        choice = body.tool_choice
        return cls(
            id=response_id,
            created_at=int(time.time()),
            status="in_progress",
            model=model,
            previous_response_id=body.previous_response_id,
            instructions=body.instructions,
            output=[],
            tools=body.tools or [],
            tool_choice={"type": "function", "name": choice.name}
            if isinstance(choice, NamedFunction)
            else choice or "auto",
            parallel_tool_calls=body.parallel_tool_calls,
            text=TextOut(format=FormatOut.of(body.text.format if body.text else None)),
            # What the request set, else OpenAI's documented default (a model's configured default may differ).
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            max_output_tokens=body.max_output_tokens,
            store=store,
            metadata=body.metadata or {},
        )

    def answer(self) -> ChatMessage:
        """The output as the assistant turn that a continued conversation carries."""
        text = "".join(part.text for item in self.output if isinstance(item, MessageOut) for part in item.content)
        calls = tuple(
            ToolCall(item.call_id, item.name, item.arguments)
            for item in self.output
            if isinstance(item, FunctionCallOut)
        )
        return ChatMessage(Role.ASSISTANT, text, tool_calls=calls)


class ResponseOutput:
    """A response's output items, one open at a time, each announced, filled and closed with
    its own events (a `Writer`). A whole reply is the same walk (`Completed` replayed), so
    both answers come from one place."""

    def __init__(
        self,
        response: ResponseObject,
        remember: Callable[[ResponseObject], Awaitable[bool]],  # store the finished response
    ) -> None:
        self.response, self.remember = response, remember
        self.sequence = itertools.count()
        self.open: MessageOut | FunctionCallOut | None = None

    def start(self, model: str, usage: Usage | None) -> list[Payload]:
        self.response.model = model
        started = self.response.model_dump(by_alias=True)
        return [
            self._event("response.created", response=started),
            self._event("response.in_progress", response=started),
        ]

    def text(self, text: str) -> list[Payload]:
        events: list[Payload] = []
        if not isinstance(self.open, MessageOut):
            events += self._close("completed")
            self.open = MessageOut(id=new_item_id("msg"), status="in_progress", content=[])
            events.append(self._added())
            part = OutputText(text="").model_dump()
            events.append(self._event("response.content_part.added", **self._where(), content_index=0, part=part))
            self.open.content.append(OutputText(text=""))
        self.open.content[0].text += text
        delta = self._event("response.output_text.delta", **self._where(), content_index=0, delta=text, logprobs=[])
        return [*events, delta]

    def call(self, call_id: str, name: str) -> list[Payload]:
        events = self._close("completed")
        self.open = FunctionCallOut(
            id=new_item_id("fc"), call_id=call_id, name=name, arguments="", status="in_progress"
        )
        return [*events, self._added()]

    def arguments(self, piece: str) -> list[Payload]:
        assert isinstance(self.open, FunctionCallOut)
        self.open.arguments += piece
        return [self._event("response.function_call_arguments.delta", **self._where(), delta=piece)]

    async def end(self, finish: FinishReason, usage: Usage) -> AsyncIterator[Payload]:
        cut = finish is FinishReason.LENGTH
        for event in self._close("incomplete" if cut else "completed"):  # the item being written when cut
            yield event
        response = self.response
        response.status = "incomplete" if cut else "completed"
        response.incomplete_details = IncompleteDetails() if cut else None
        response.completed_at = None if cut else int(time.time())
        response.usage = ResponseUsage.of(usage)
        if not await self.remember(response):
            response.store = False
        final = response.model_dump(by_alias=True)
        yield self._event("response.incomplete" if cut else "response.completed", response=final)

    def _event(self, kind: str, **fields: Any) -> Named:
        return Named(kind, {"type": kind, "sequence_number": next(self.sequence), **fields})

    def _added(self) -> Named:
        assert self.open is not None
        item = self.open.model_dump()
        return self._event("response.output_item.added", output_index=len(self.response.output), item=item)

    def _close(self, status: ItemStatus) -> list[Payload]:
        if self.open is None:
            return []
        where, item = self._where(), self.open
        item.status = status
        events: list[Payload]
        if isinstance(item, MessageOut):
            part = item.content[0].model_dump()
            events = [
                self._event("response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[]),
                self._event("response.content_part.done", **where, content_index=0, part=part),
            ]
        else:
            done = {"name": item.name, "arguments": item.arguments}
            events = [self._event("response.function_call_arguments.done", **where, **done)]
        done_item = item.model_dump()
        events.append(self._event("response.output_item.done", output_index=where["output_index"], item=done_item))
        self.response.output.append(item)
        self.open = None
        return events

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open.id, "output_index": len(self.response.output)}
