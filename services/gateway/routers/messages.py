"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API over the same
inference calls as chat completions. Streams use Anthropic's named events: message_start,
content_block_start / _delta / _stop, message_delta (stop_reason, usage), message_stop."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from services.fleet.client import FleetClient
from services.gateway.admission import DOORS, admit
from services.gateway.auth import Caller, get_caller
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import NODE_HEADER, generate, get_inference, get_settings
from services.gateway.protocol.messages import MessageBlocks, MessagesInput, MessagesRequest, new_message_id
from services.gateway.sse import Framing, replay, translate

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
        lambda events: translate(events, MessageBlocks(message_id), caller.used),
        lambda: inference.chat([chat], body.node),
        framing=Framing.ANTHROPIC,
    )
    if isinstance(reply, Response):
        return reply
    response.headers[NODE_HEADER] = reply[0].node
    blocks = MessageBlocks(message_id)
    await replay(reply[0], blocks)
    return blocks.message


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
