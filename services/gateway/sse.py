"""Server-sent events in OpenAI's framing (`data: <json>` events, closed by `data: [DONE]`), or
in Anthropic's (named events, `event: <type>` then `data: <json>`, ending at `message_stop`).

While a request waits (queued, or its model loading) the stream carries SSE
comments such as `: queued position=2 model=gemma-3-270m`, which OpenAI clients skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse

from services.common.errors import MeshError, Unavailable, http_status
from services.gateway.drain import Drain
from services.gateway.errors import anthropic_error_body, error_body, mesh_error_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comment:
    """An SSE comment line: clients ignore it, people watching the stream see progress."""

    text: str


@dataclass(frozen=True)
class Named:
    """An event with a type line (Anthropic's framing): `event: <name>`, then its data."""

    name: str
    data: dict[str, Any]


Payload = dict[str, Any] | Named | Comment


def _event(payload: Payload | str) -> str:
    if isinstance(payload, Comment):
        return f": {payload.text}\n\n"
    if isinstance(payload, Named):
        return f"event: {payload.name}\ndata: {json.dumps(payload.data, separators=(',', ':'), ensure_ascii=False)}\n\n"
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n"


def _failure(error: MeshError | None, anthropic: bool) -> str:
    """The event that tells a client its stream failed (the headers are sent already)."""
    status, message = (http_status(error), error.message) if error else (500, "Internal error; see the gateway log.")
    if anthropic:
        return _event(Named("error", anthropic_error_body(status, message)))
    if error is not None:
        return _event(mesh_error_body(error))
    return _event(error_body(status, message, code="internal_error"))


async def _events(payloads: AsyncIterator[Payload], anthropic: bool) -> AsyncIterator[str]:
    # Headers are already sent: an error mid-stream becomes one error event (then [DONE] for OpenAI).
    try:
        async with contextlib.aclosing(payloads):  # type: ignore[type-var]
            async for payload in payloads:
                yield _event(payload)
    except MeshError as error:
        yield _failure(error, anthropic)
    except Exception:  # noqa: BLE001 - never end a stream without telling the client
        log.exception("stream failed")
        yield _failure(None, anthropic)
    if not anthropic:
        yield _event("[DONE]")


_SHUTTING_DOWN = Unavailable(
    "The gateway is shutting down; retry the request.", reason="SHUTTING_DOWN", retry_after_seconds=1
)


class _SSEResponse(StreamingResponse):
    """A stream that the gateway's drain can end (services/gateway/drain.py), and that hands
    its request slot back when it ends, however it ends: finished, failed, cut by the client,
    ended by the drain, or never started."""

    def __init__(
        self, payloads: AsyncIterator[Payload], on_close: Callable[[], None] | None, anthropic: bool = False
    ) -> None:
        super().__init__(
            _events(payloads, anthropic),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close
        self.anthropic = anthropic

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        drain: Drain = scope["app"].state.drain
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            with drain.stream():
                await super().__call__(scope, receive, tracked)
        except asyncio.CancelledError:
            if not (drain.closing.is_set() and started):
                raise
            # The drain ended this stream: it ends as any failed stream does, error then [DONE].
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            ending = _failure(_SHUTTING_DOWN, self.anthropic) + ("" if self.anthropic else _event("[DONE]"))
            with contextlib.suppress(OSError):  # the client may have gone as well
                await send({"type": "http.response.body", "body": ending.encode(), "more_body": False})
        finally:
            if self.on_close is not None:
                self.on_close()


def sse_response(
    payloads: AsyncIterator[Payload], on_close: Callable[[], None] | None = None, anthropic: bool = False
) -> StreamingResponse:
    return _SSEResponse(payloads, on_close, anthropic)


def wait_comment(state: str, model: str, position: int) -> Comment:
    return Comment(f"{state} position={position} model={model}" if position else f"{state} model={model}")
