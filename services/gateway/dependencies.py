"""What routers get from the app: settings, upstream clients, disconnect handling.

Dependencies are `async def` even when they do not await: FastAPI runs a plain `def`
dependency in its thread pool, a thread hop per dependency per request (milliseconds
of time to first token on a busy machine)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request, Response

from services.common.errors import Cancelled
from services.common.files import FileStore
from services.common.grpc_client import prepend
from services.embeddings.client import EmbeddingsClient
from services.fleet.client import FleetClient
from services.gateway.auth import Caller
from services.gateway.config import GatewaySettings
from services.gateway.response_store import ResponseStore
from services.gateway.sse import Framing, Payload, sse_response
from services.inference.api import Completed, StreamEvent
from services.inference.client import InferenceClient
from services.scheduler.client import SchedulerClient
from services.trainer.client import TrainerClient

T = TypeVar("T")
NODE_HEADER = "x-llmmesh-node"  # the fleet node that answered


async def get_settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


async def get_inference(request: Request) -> FleetClient:
    return request.app.state.inference


async def get_home_inference(request: Request) -> InferenceClient:
    """The home inference service: administration, queues and embeddings never route."""
    return request.app.state.inference.home


async def get_response_store(request: Request) -> ResponseStore | None:
    return request.app.state.responses


async def get_embeddings(request: Request) -> EmbeddingsClient:
    return request.app.state.embeddings


async def get_scheduler(request: Request) -> SchedulerClient:
    return request.app.state.scheduler


async def get_files(request: Request) -> FileStore:
    return request.app.state.files


async def get_trainer(request: Request) -> TrainerClient:
    return request.app.state.trainer


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the HTTP client goes away first, so that the
    backend stops generating an answer nobody will read."""
    task = asyncio.ensure_future(work)

    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise Cancelled("The client disconnected.")
    return task.result()


async def generate(
    request: Request,
    caller: Caller,
    stream: bool,
    open_stream: Callable[[], Awaitable[AsyncIterator[StreamEvent]]],
    chunks: Callable[[AsyncIterator[StreamEvent]], AsyncIterator[Payload]],
    call: Callable[[], Awaitable[list[Completed]]],
    framing: Framing = Framing.CHAT,
) -> Response | list[Completed]:
    """Chat and completions alike, under the caller's request slot: a stream hands the slot
    to its SSE response, which gives it back however the stream ends; a whole reply gives it
    back once complete, and its tokens count against the key."""
    async with caller.request_slot() as slot:
        if stream:
            events = await cancel_on_disconnect(request, open_stream())
            first = await anext(events)  # opened: in hand already, and it names the node
            response = sse_response(chunks(prepend(first, events)), on_close=slot.hand_over(), framing=framing)
            response.headers[NODE_HEADER] = first.node
            return response
        results = await cancel_on_disconnect(request, call())
    caller.used(sum(r.usage.prompt_tokens for r in results), sum(r.usage.completion_tokens for r in results))
    return results
