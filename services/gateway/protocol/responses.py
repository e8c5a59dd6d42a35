"""/v1/responses: OpenAI's Responses API mapped onto the same inference contract as chat
completions, and its replies in the Responses shape. `previous_response_id` continues a stored
conversation (services/gateway/response_store.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from pydantic import Field

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


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def function_call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if status == "completed" else "",
        "status": status,
    }


def response_body(
    response_id: str,
    body: ResponsesRequest,
    model: str,
    output: list[dict[str, Any]],
    finish: FinishReason | None,
    usage: Usage | None,
    stored: bool = False,
) -> dict[str, Any]:
    """The response object; `finish` None: still in progress."""
    status = "in_progress" if finish is None else ("incomplete" if finish is FinishReason.LENGTH else "completed")
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "store": stored,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "text": {"format": (body.text.format if body.text else TextFormat()).model_dump(by_alias=True)},
        "tool_choice": _tool_choice_body(body.tool_choice),
        "tools": [tool.model_dump() for tool in body.tools or ()],
        "metadata": body.metadata or {},
        "usage": None
        if usage is None
        else {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    }


def _tool_choice_body(choice: Literal["none", "auto", "required"] | NamedFunction | None) -> Any:
    if isinstance(choice, NamedFunction):
        return {"type": "function", "name": choice.name}
    return choice or "auto"


class ResponseOutput:
    """A streamed response's output items, one open at a time, each announced, filled and closed
    with its own events (a `Writer`)."""

    def __init__(
        self,
        response_id: str,
        body: ResponsesRequest,
        remember: Callable[[str, tuple[ToolCall, ...]], Awaitable[bool]],
    ) -> None:
        self.response_id, self.body, self.remember = response_id, body, remember
        self.model = ""
        self.items: list[dict[str, Any]] = []
        self.sequence = itertools.count()
        self.open: dict[str, Any] | None = None  # the item being written: its id, kind, text or call

    def start(self, model: str) -> list[Payload]:
        self.model = model
        started = response_body(self.response_id, self.body, model, [], None, None)
        return [
            self._event("response.created", response=started),
            self._event("response.in_progress", response=started),
        ]

    def text(self, text: str) -> list[Payload]:
        events: list[Payload] = []
        if self.open is None or self.open["kind"] != "message":
            events += self._close()
            self.open = {"kind": "message", "id": new_item_id("msg"), "text": ""}
            events.append(
                self._event("response.output_item.added", output_index=len(self.items), item=self._item("in_progress"))
            )
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append(self._event("response.content_part.added", **self._where(), content_index=0, part=part))
        self.open["text"] += text
        return [*events, self._event("response.output_text.delta", **self._where(), content_index=0, delta=text)]

    def call(self, call_id: str, name: str) -> list[Payload]:
        events = self._close()
        self.open = {"kind": "function_call", "id": new_item_id("fc"), "call": ToolCall(call_id, name, "")}
        added = self._event("response.output_item.added", output_index=len(self.items), item=self._item("in_progress"))
        return [*events, added]

    def arguments(self, piece: str) -> list[Payload]:
        assert self.open is not None
        call = self.open["call"]
        self.open["call"] = dataclasses.replace(call, arguments=call.arguments + piece)
        return [self._event("response.function_call_arguments.delta", **self._where(), delta=piece)]

    async def end(self, finish: FinishReason, usage: Usage) -> AsyncIterator[Payload]:
        for event in self._close():
            yield event
        text = "".join(c["text"] for item in self.items if item["type"] == "message" for c in item["content"])
        calls = [ToolCall(i["call_id"], i["name"], i["arguments"]) for i in self.items if i["type"] == "function_call"]
        stored = await self.remember(text, tuple(calls))
        final = response_body(self.response_id, self.body, self.model, self.items, finish, usage, stored)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield self._event(kind, response=final)

    def _event(self, kind: str, **fields: Any) -> Named:
        return Named(kind, {"type": kind, "sequence_number": next(self.sequence), **fields})

    def _close(self) -> list[Payload]:
        if self.open is None:
            return []
        where, item = self._where(), self._item("completed")
        events: list[Payload]
        if self.open["kind"] == "message":
            text = self.open["text"]
            part = {"type": "output_text", "text": text, "annotations": []}
            events = [
                self._event("response.output_text.done", **where, content_index=0, text=text),
                self._event("response.content_part.done", **where, content_index=0, part=part),
            ]
        else:
            arguments = self.open["call"].arguments
            events = [self._event("response.function_call_arguments.done", **where, arguments=arguments)]
        events.append(self._event("response.output_item.done", output_index=where["output_index"], item=item))
        self.items.append(item)
        self.open = None
        return events

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.items)}

    def _item(self, status: str) -> dict[str, Any]:
        assert self.open is not None
        if self.open["kind"] == "message":
            return message_item(self.open["id"], self.open["text"], status)
        return function_call_item(self.open["id"], self.open["call"], status)
