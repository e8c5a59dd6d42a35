"""Reading a remote API's streamed answer: server-sent events or newline-delimited JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


async def read_events(response: httpx.Response, kind: str) -> AsyncIterator[str]:
    """Data payloads of an SSE stream, or the lines of an NDJSON stream."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if kind == "ndjson":
            if line.strip():
                yield line
            continue
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield "\n".join(data)
            data = []
    if data:
        yield "\n".join(data)
