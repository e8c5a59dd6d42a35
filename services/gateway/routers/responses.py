"""POST /v1/responses: OpenAI's Responses API over the same inference calls as chat completions.
Conversations are stored where PostgreSQL is configured, and `previous_response_id` continues
one. Streams send the Responses event types: response.created, output items and content parts
added, text and function-call argument deltas, their done events, and response.completed
(response.incomplete when max_output_tokens cut it)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Request, Response

from services.common.errors import FailedPrecondition, Unavailable
from services.fleet.client import FleetClient
from services.gateway.admission import DOORS, admit
from services.gateway.auth import Caller, get_caller
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
from services.gateway.sse import Framing, Named, Payload, translate
from services.inference.api import ChatMessage, FinishReason, Role, ToolCall, Usage

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
    caller: Caller = Depends(get_caller),
) -> Any:
    admit(caller, DOORS["responses"], body, [body.model])
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
        except (OSError, asyncpg.PostgresError, Unavailable) as error:  # the answer goes out, marked not stored
            log.warning("response %s not stored: %s", response_id, error)
            return False

    reply = await generate(
        request,
        caller,
        body.stream,
        lambda: inference.stream_chat([chat], body.node),
        lambda events: translate(events, _Output(response_id, body, remember), caller.used),
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
