"""Server-sent events in OpenAI's framing: `data: <json>` events, closed by `data: [DONE]`.

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

from services.common.errors import MeshError, Unavailable
from services.gateway.drain import Drain
from services.gateway.errors import error_body, mesh_error_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comment:
    """An SSE comment line: clients ignore it, people watching the stream see progress."""

    text: str


def _event(payload: dict[str, Any] | str | Comment) -> str:
    if isinstance(payload, Comment):
        return f": {payload.text}\n\n"
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n"


async def _events(payloads: AsyncIterator[dict[str, Any] | Comment]) -> AsyncIterator[str]:
    # Headers are already sent: an error mid-stream becomes one error event, then [DONE].
    try:
        async with contextlib.aclosing(payloads):  # type: ignore[type-var]
            async for payload in payloads:
                yield _event(payload)
    except MeshError as error:
        yield _event(mesh_error_body(error))
    except Exception:  # noqa: BLE001 - never end a stream without telling the client
        log.exception("stream failed")
        yield _event(error_body(500, "Internal error; see the gateway log.", code="internal_error"))
    yield _event("[DONE]")


_SHUTTING_DOWN = Unavailable(
    "The gateway is shutting down; retry the request.", reason="SHUTTING_DOWN", retry_after_seconds=1
)


class _SSEResponse(StreamingResponse):
    """A stream that the gateway's drain can end (services/gateway/drain.py), and that hands
    its request slot back when it ends, however it ends: finished, failed, cut by the client,
    ended by the drain, or never started."""

    def __init__(self, payloads: AsyncIterator[dict[str, Any] | Comment], on_close: Callable[[], None] | None) -> None:
        super().__init__(
            _events(payloads),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close

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
            ending = _event(mesh_error_body(_SHUTTING_DOWN)) + _event("[DONE]")
            with contextlib.suppress(OSError):  # the client may have gone as well
                await send({"type": "http.response.body", "body": ending.encode(), "more_body": False})
        finally:
            if self.on_close is not None:
                self.on_close()


def sse_response(
    payloads: AsyncIterator[dict[str, Any] | Comment], on_close: Callable[[], None] | None = None
) -> StreamingResponse:
    return _SSEResponse(payloads, on_close)


def wait_comment(state: str, model: str, position: int) -> Comment:
    return Comment(f"{state} position={position} model={model}" if position else f"{state} model={model}")
