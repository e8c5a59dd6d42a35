"""Server-sent events in OpenAI's framing: `data: <json>` events, closed by `data: [DONE]`.

While a request waits (queued, or its model loading) the stream carries SSE
comments such as `: queued position=2 model=gemma-3-270m`, which OpenAI clients skip.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse

from services.common.errors import MeshError
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


def sse_response(payloads: AsyncIterator[dict[str, Any] | Comment]) -> StreamingResponse:
    return StreamingResponse(
        _events(payloads),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def wait_comment(state: str, model: str, position: int) -> Comment:
    return Comment(f"{state} position={position} model={model}" if position else f"{state} model={model}")
