"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API over the same
inference calls as chat completions. Streams use Anthropic's named events: message_start,
content_block_start / _delta / _stop, message_delta (stop_reason, usage), message_stop."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from services.gateway.auth import Caller, scope
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
from services.gateway.sse import Framing, Named, Payload, wait_comment
from services.inference.client import FleetClient, StreamEvent, ToolCall, Usage

router = APIRouter()


@router.post("/v1/messages")
async def create_message(
    body: MessagesRequest,
    request: Request,
    response: Response,
    settings: GatewaySettings = Depends(get_settings),
    inference: FleetClient = Depends(get_inference),
    caller: Caller = Depends(scope("chat")),
) -> Any:
    caller.require_model(body.model)
    body.check_limits(settings)
    chat = dataclasses.replace(body.chat_request(), tenant=caller.owner)  # the caller's own cache entries
    message_id = new_message_id()
    reply = await generate(
        request,
        caller,
        body.stream,
        lambda: inference.stream_chat([chat], body.node),
        lambda events: _events(events, message_id, caller),
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
    caller: Caller = Depends(scope("chat")),
) -> dict[str, int]:
    """The tokens the prompt would take on the model: its chat template, tools included."""
    caller.require_model(body.model)
    body.check_limits(settings)
    chat = dataclasses.replace(body.to_domain(), tenant=caller.owner)
    return {"input_tokens": await inference.count_tokens(chat, body.node)}


class _Blocks:
    """The content blocks of a streamed message: one open at a time, numbered from 0."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None  # "text" or "tool_use"

    def start(self, block: dict[str, Any]) -> list[Named]:
        events = self.stop()
        self.index += 1
        self.open = block["type"]
        return [
            *events,
            Named("content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}),
        ]

    def delta(self, delta: dict[str, Any]) -> Named:
        return Named("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def stop(self) -> list[Named]:
        if self.open is None:
            return []
        self.open = None
        return [Named("content_block_stop", {"type": "content_block_stop", "index": self.index})]


def _tool_use(call_id: str, name: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": {}}


async def _events(events: AsyncIterator[StreamEvent], message_id: str, caller: Caller) -> AsyncIterator[Payload]:
    blocks, started = _Blocks(), False
    usage, finish, streamed_calls = Usage(0, 0), None, False
    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                chunk = event.chunk
                if wait := chunk.wait_status:
                    yield wait_comment(wait.state.value, wait.model, wait.position)
                    continue
                if not started:
                    started = True
                    yield Named(
                        "message_start", {"type": "message_start", "message": message_start(message_id, event.model)}
                    )
                if chunk.text:
                    if blocks.open != "text":
                        for named in blocks.start({"type": "text", "text": ""}):
                            yield named
                    yield blocks.delta({"type": "text_delta", "text": chunk.text})
                for delta in chunk.tool_call_deltas:  # the first piece of a call names it
                    streamed_calls = True
                    if delta.name:
                        for named in blocks.start(_tool_use(delta.id, delta.name)):
                            yield named
                    if delta.arguments:
                        yield blocks.delta({"type": "input_json_delta", "partial_json": delta.arguments})
                if chunk.tool_calls and not streamed_calls:  # a backend that sends its calls whole
                    for call in chunk.tool_calls:
                        for named in _whole_call(blocks, call):
                            yield named
                usage, finish = chunk.usage or usage, chunk.finish_reason or finish
    finally:  # also when the stream ends early: what was used
        caller.used(usage.prompt_tokens, usage.completion_tokens)
    for named in blocks.stop():
        yield named
    stop_reason = STOP_REASONS.get(finish, "end_turn") if finish else "end_turn"
    yield Named(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": usage_body(usage),
        },
    )
    yield Named("message_stop", {"type": "message_stop"})


def _whole_call(blocks: _Blocks, call: ToolCall) -> list[Named]:
    return [
        *blocks.start(_tool_use(call.id, call.name)),
        blocks.delta({"type": "input_json_delta", "partial_json": call.arguments or "{}"}),
    ]
