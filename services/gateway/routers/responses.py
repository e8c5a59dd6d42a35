"""POST /v1/responses: OpenAI's Responses API over the same inference calls as chat completions.
Conversations are stored where PostgreSQL is configured, and `previous_response_id` continues
one. Streams send the Responses event types: response.created, output items and content parts
added, text and function-call argument deltas, their done events, and response.completed
(response.incomplete when max_output_tokens cut it)."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Request, Response

from services.common.errors import FailedPrecondition
from services.gateway.auth import Caller, scope
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import NODE_HEADER, generate, get_inference, get_response_store, get_settings
from services.gateway.protocol.responses import (
    ResponsesRequest,
    function_call_item,
    message_item,
    new_item_id,
    response_body,
)
from services.gateway.response_store import ResponseStore
from services.gateway.sse import Framing, Named, Payload, wait_comment
from services.inference.client import ChatMessage, FinishReason, FleetClient, Role, StreamEvent, ToolCall, Usage

router = APIRouter()
log = logging.getLogger(__name__)


@router.post("/v1/responses")
async def create_response(
    body: ResponsesRequest,
    request: Request,
    response: Response,
    settings: GatewaySettings = Depends(get_settings),
    inference: FleetClient = Depends(get_inference),
    store: ResponseStore | None = Depends(get_response_store),
    caller: Caller = Depends(scope("chat")),
) -> Any:
    caller.require_model(body.model)
    body.check_limits(settings)
    history: tuple[ChatMessage, ...] = ()
    if body.previous_response_id:
        if store is None:
            raise FailedPrecondition(
                "'previous_response_id' needs stored responses, and this gateway has no database "
                "(DATABASE_URL): send the whole conversation in 'input'.",
                param="previous_response_id",
            )
        history = await store.conversation(body.previous_response_id, caller.owner)
    chat = dataclasses.replace(body.to_domain(history), tenant=caller.owner)  # the caller's own cache entries
    response_id = new_item_id("resp")

    async def remember(text: str, calls: tuple[ToolCall, ...]) -> bool:
        """Store the conversation and this answer (unless asked not to); False when not stored."""
        if store is None or body.store is False:
            return False
        answer = ChatMessage(Role.ASSISTANT, text, tool_calls=calls)
        try:
            return await store.save(response_id, caller.owner, (*body.turns(history), answer))
        except (OSError, asyncpg.PostgresError) as error:  # the answer still goes out, marked not stored
            log.warning("response %s not stored: %s", response_id, error)
            return False

    reply = await generate(
        request,
        caller,
        body.stream,
        lambda: inference.stream_chat([chat], body.node),
        lambda events: _events(events, response_id, body, caller, remember),
        lambda: inference.chat([chat], body.node),
        framing=Framing.RESPONSES,
    )
    if isinstance(reply, Response):
        return reply
    response.headers[NODE_HEADER] = reply[0].node
    done = reply[0]
    output = [message_item(new_item_id("msg"), done.text)] if done.text or not done.tool_calls else []
    output += [function_call_item(new_item_id("fc"), call) for call in done.tool_calls]
    stored = await remember(done.text, done.tool_calls)
    return response_body(response_id, body, done.model, output, done.finish_reason, done.usage, stored)


class _Output:
    """The output items of a streamed response: one open at a time, each announced, filled and
    closed with its own events."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.sequence = itertools.count()
        self.open: dict[str, Any] | None = None  # the item being written: its id, kind, text or call

    def event(self, kind: str, **fields: Any) -> Named:
        return Named(kind, {"type": kind, "sequence_number": next(self.sequence), **fields})

    def text(self, delta: str) -> list[Named]:
        events = []
        if self.open is None or self.open["kind"] != "message":
            events += self.close()
            self.open = {"kind": "message", "id": new_item_id("msg"), "text": ""}
            index = len(self.items)
            events.append(self.event("response.output_item.added", output_index=index, item=self._item("in_progress")))
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append(self.event("response.content_part.added", **self._where(), content_index=0, part=part))
        self.open["text"] += delta
        return [*events, self.event("response.output_text.delta", **self._where(), content_index=0, delta=delta)]

    def call(self, call_id: str, name: str) -> list[Named]:
        events = self.close()
        self.open = {"kind": "function_call", "id": new_item_id("fc"), "call": ToolCall(call_id, name, "")}
        index = len(self.items)
        return [*events, self.event("response.output_item.added", output_index=index, item=self._item("in_progress"))]

    def arguments(self, delta: str) -> Named:
        assert self.open is not None
        call = self.open["call"]
        self.open["call"] = dataclasses.replace(call, arguments=call.arguments + delta)
        return self.event("response.function_call_arguments.delta", **self._where(), delta=delta)

    def close(self) -> list[Named]:
        if self.open is None:
            return []
        where, item = self._where(), self._item("completed")
        if self.open["kind"] == "message":
            text = self.open["text"]
            part = {"type": "output_text", "text": text, "annotations": []}
            events = [
                self.event("response.output_text.done", **where, content_index=0, text=text),
                self.event("response.content_part.done", **where, content_index=0, part=part),
            ]
        else:
            arguments = self.open["call"].arguments
            events = [self.event("response.function_call_arguments.done", **where, arguments=arguments)]
        events.append(self.event("response.output_item.done", output_index=where["output_index"], item=item))
        self.items.append(item)
        self.open = None
        return events

    def answer(self) -> tuple[str, tuple[ToolCall, ...]]:
        """The text and the calls written, as the assistant's turn of the conversation."""
        text = "".join(c["text"] for item in self.items if item["type"] == "message" for c in item["content"])
        calls = [ToolCall(i["call_id"], i["name"], i["arguments"]) for i in self.items if i["type"] == "function_call"]
        return text, tuple(calls)

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.items)}

    def _item(self, status: str) -> dict[str, Any]:
        assert self.open is not None
        if self.open["kind"] == "message":
            return message_item(self.open["id"], self.open["text"], status)
        return function_call_item(self.open["id"], self.open["call"], status)


async def _events(
    events: AsyncIterator[StreamEvent],
    response_id: str,
    body: ResponsesRequest,
    caller: Caller,
    remember: Callable[[str, tuple[ToolCall, ...]], Awaitable[bool]],
) -> AsyncIterator[Payload]:
    output, model = _Output(), ""
    usage, finish, streamed_calls = Usage(0, 0), None, False
    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                chunk = event.chunk
                if wait := chunk.wait_status:
                    yield wait_comment(wait.state.value, wait.model, wait.position)
                    continue
                if not model:
                    model = event.model
                    started = response_body(response_id, body, model, [], None, None)
                    yield output.event("response.created", response=started)
                    yield output.event("response.in_progress", response=started)
                if chunk.text:
                    for named in output.text(chunk.text):
                        yield named
                for delta in chunk.tool_call_deltas:  # the first piece of a call names it
                    streamed_calls = True
                    if delta.name:
                        for named in output.call(delta.id, delta.name):
                            yield named
                    if delta.arguments:
                        yield output.arguments(delta.arguments)
                if chunk.tool_calls and not streamed_calls:  # a backend that sends its calls whole
                    for call in chunk.tool_calls:
                        for named in output.call(call.id, call.name):
                            yield named
                        yield output.arguments(call.arguments)
                usage, finish = chunk.usage or usage, chunk.finish_reason or finish
    finally:  # also when the stream ends early: what was used
        caller.used(usage.prompt_tokens, usage.completion_tokens)
    for named in output.close():
        yield named
    finish = finish or FinishReason.STOP
    stored = await remember(*output.answer())
    final = response_body(response_id, body, model, output.items, finish, usage, stored)
    yield output.event(
        "response.incomplete" if final["status"] == "incomplete" else "response.completed", response=final
    )
