"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API over the same
inference calls as chat completions. Streams use Anthropic's named events: message_start,
content_block_start / _delta / _stop, message_delta (stop_reason, usage), message_stop."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from services.fleet.client import FleetClient
from services.gateway.admission import DOORS, admit
from services.gateway.auth import Caller, get_caller
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import NODE_HEADER, generate, get_inference, get_settings
from services.gateway.protocol.messages import (
    STOP_REASONS,
    MessagesInput,
    MessagesRequest,
    message_body,
    message_start,
    new_message_id,
    usage_body,
)
from services.gateway.sse import Framing, Named, Payload, translate
from services.inference.api import FinishReason, Usage

router = APIRouter()


@router.post("/v1/messages")
async def create_message(
    body: MessagesRequest,
    request: Request,
    response: Response,
    settings: GatewaySettings = Depends(get_settings),
    inference: FleetClient = Depends(get_inference),
    caller: Caller = Depends(get_caller),
) -> Any:
    admit(caller, DOORS["messages"], body, [body.model])
    body.check_limits(settings)
    chat = dataclasses.replace(body.chat_request(), tenant=caller.owner)  # the caller's own cache entries
    message_id = new_message_id()
    reply = await generate(
        request,
        caller,
        body.stream,
        lambda: inference.stream_chat([chat], body.node),
        lambda events: translate(events, _Blocks(message_id), caller.used),
        lambda: inference.chat([chat], body.node),
        framing=Framing.ANTHROPIC,
    )
    if isinstance(reply, Response):
        return reply
    response.headers[NODE_HEADER] = reply[0].node
    done = reply[0]
    return message_body(message_id, done.model, done.text, done.tool_calls, done.finish_reason, done.usage)


@router.post("/v1/messages/count_tokens")
async def count_tokens(
    body: MessagesInput,
    settings: GatewaySettings = Depends(get_settings),
    inference: FleetClient = Depends(get_inference),
    caller: Caller = Depends(get_caller),
) -> dict[str, int]:
    """The tokens the prompt would take on the model: its chat template, tools included."""
    admit(caller, DOORS["count_tokens"], body, [body.model])
    body.check_limits(settings)
    chat = dataclasses.replace(body.to_domain(), tenant=caller.owner)
    return {"input_tokens": await inference.count_tokens(chat, body.node)}


class _Blocks:
    """A streamed message's content blocks, one open at a time, numbered from 0 (a `Writer`)."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.index = -1
        self.open: str | None = None  # "text" or "tool_use"

    def start(self, model: str) -> list[Payload]:
        return [Named("message_start", {"type": "message_start", "message": message_start(self.message_id, model)})]

    def text(self, text: str) -> list[Payload]:
        opening = self._open({"type": "text", "text": ""}) if self.open != "text" else []
        return [*opening, self._delta({"type": "text_delta", "text": text})]

    def call(self, call_id: str, name: str) -> list[Payload]:
        return self._open({"type": "tool_use", "id": call_id, "name": name, "input": {}})

    def arguments(self, piece: str) -> list[Payload]:
        return [self._delta({"type": "input_json_delta", "partial_json": piece})]

    async def end(self, finish: FinishReason, usage: Usage) -> AsyncIterator[Payload]:
        for named in self._close():
            yield named
        delta = {"stop_reason": STOP_REASONS.get(finish, "end_turn"), "stop_sequence": None}
        yield Named("message_delta", {"type": "message_delta", "delta": delta, "usage": usage_body(usage)})
        yield Named("message_stop", {"type": "message_stop"})

    def _open(self, block: dict[str, Any]) -> list[Payload]:
        events = self._close()
        self.index += 1
        self.open = block["type"]
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return [*events, Named("content_block_start", start)]

    def _delta(self, delta: dict[str, Any]) -> Named:
        return Named("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def _close(self) -> list[Payload]:
        if self.open is None:
            return []
        self.open = None
        return [Named("content_block_stop", {"type": "content_block_stop", "index": self.index})]
