"""POST /v1/responses: OpenAI's Responses API over the same inference calls as chat completions.
Conversations are stored where PostgreSQL is configured: `previous_response_id` continues one;
GET /v1/responses/{id} reads one again, `/input_items` lists the turns it was answered from,
and DELETE forgets it. Streams send the Responses event types: response.created, output items
and content parts added, text and function-call argument deltas, their done events, and
response.completed (response.incomplete when max_output_tokens cut it)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query, Request, Response

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.fleet.client import FleetClient
from services.gateway.admission import DOORS, admit, check_text
from services.gateway.auth import Caller, get_caller, scope
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import NODE_HEADER, generate, get_inference, get_response_store, get_settings
from services.gateway.protocol.pages import openai_list, page_after
from services.gateway.protocol.responses import (
    ResponseObject,
    ResponseOutput,
    ResponsesRequest,
    input_items,
    new_item_id,
)
from services.gateway.response_store import ResponseStore
from services.gateway.sse import Framing, Named, replay, translate
from services.inference.api import ChatMessage

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
        history = await _stored(store, "previous_response_id").conversation(body.previous_response_id, caller.owner)
    chat = dataclasses.replace(body.to_domain(history), tenant=caller.owner)  # the caller's own cache entries
    response_id = new_item_id("resp")

    async def remember(finished: ResponseObject) -> bool:
        """Store the conversation, this answer and the response (unless asked not to); False when not stored."""
        if store is None or body.store is False:
            return False
        conversation = (*body.turns(history), finished.answer())
        try:
            return await store.save(response_id, caller.owner, conversation, finished.model_dump_json(by_alias=True))
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


@router.get("/v1/responses/{response_id}")
async def retrieve_response(
    response_id: str,
    stream: bool = Query(False),
    store: ResponseStore | None = Depends(get_response_store),
    caller: Caller = Depends(scope("chat")),
) -> Response:
    if stream:  # OpenAI streams a background response's events again; nothing here runs in the background
        raise InvalidArgument("'stream' is not supported when retrieving a stored response.", param="stream")
    stored = await _stored(store, "response_id", response_id).response(response_id, caller.owner)
    return Response(stored, media_type="application/json")


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("desc", description="asc: oldest first."),
    after: str = Query("", description="An item id of this list: the page right after it."),
    store: ResponseStore | None = Depends(get_response_store),
    caller: Caller = Depends(scope("chat")),
) -> dict[str, Any]:
    conversation = await _stored(store, "response_id", response_id).conversation(response_id, caller.owner, None)
    items = input_items(response_id, conversation[:-1])  # the last turn is the response's own answer
    if order == "desc":
        items.reverse()
    return openai_list(*page_after(items, [item["id"] for item in items], after, limit, "an item"))


@router.delete("/v1/responses/{response_id}")
async def delete_response(
    response_id: str,
    store: ResponseStore | None = Depends(get_response_store),
    caller: Caller = Depends(scope("chat")),
) -> dict[str, Any]:
    await _stored(store, "response_id", response_id).delete(response_id, caller.owner)
    return {"id": response_id, "object": "response", "deleted": True}


def _stored(store: ResponseStore | None, param: str, response_id: str = "") -> ResponseStore:
    """The store, for a response id from the path (text PostgreSQL can hold: no NUL); a 400
    where the gateway has no database."""
    check_text(response_id, param)
    if store is None:
        raise FailedPrecondition(
            "Stored responses need a database, and this gateway has none (DATABASE_URL): "
            "send the whole conversation in 'input'.",
            param=param,
        )
    return store
