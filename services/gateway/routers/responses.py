"""POST /v1/responses: OpenAI's Responses API over the same inference calls as chat completions.
Conversations are stored where PostgreSQL is configured, and `previous_response_id` continues
one. Streams send the Responses event types: response.created, output items and content parts
added, text and function-call argument deltas, their done events, and response.completed
(response.incomplete when max_output_tokens cut it)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Request, Response

from services.common.errors import FailedPrecondition, Unavailable
from services.fleet.client import FleetClient
from services.gateway.admission import DOORS, admit
from services.gateway.auth import Caller, get_caller
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import NODE_HEADER, generate, get_inference, get_response_store, get_settings
from services.gateway.protocol.responses import ResponseObject, ResponseOutput, ResponsesRequest, new_item_id
from services.gateway.response_store import ResponseStore
from services.gateway.sse import Framing, Named, replay, translate
from services.inference.api import ChatMessage, Role, ToolCall

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

    def output() -> ResponseOutput:
        return ResponseOutput(ResponseObject.started(response_id, body, body.model, store=will_store), remember)

    will_store = store is not None and body.store is not False
    reply = await generate(
        request,
        caller,
        body.stream,
        lambda: inference.stream_chat([chat], body.node),
        lambda events: translate(events, output(), caller.used),
        lambda: inference.chat([chat], body.node),
        framing=Framing.RESPONSES,
    )
    if isinstance(reply, Response):
        return reply
    response.headers[NODE_HEADER] = reply[0].node
    final = (await replay(reply[0], output()))[-1]  # response.completed (or .incomplete)
    assert isinstance(final, Named)
    return final.data["response"]
