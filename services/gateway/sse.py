"""Server-sent events in one of three framings (`Framing`): chat completions' (`data: <json>`
events, closed by `data: [DONE]`), and the named events (`event: <type>`, then `data: <json>`)
of Anthropic's Messages and OpenAI's Responses, which end with their last event.

While a request waits (queued, or its model loading) the stream carries SSE
comments such as `: queued position=2 model=gemma-3-270m`, which OpenAI clients skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from fastapi.responses import StreamingResponse

from services.common.errors import MeshError, Unavailable, http_status
from services.gateway.drain import Drain
from services.gateway.errors import anthropic_error_body, error_body, mesh_error_body
from services.inference.api import Chunk, Completed, FinishReason, StreamEvent, Usage

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


Payload = Mapping[str, Any] | Named | Comment  # a JSON object (a TypedDict too), a named event, a comment


def _event(payload: Payload | str) -> str:
    if isinstance(payload, Comment):
        return f": {payload.text}\n\n"
    if isinstance(payload, Named):
        return f"event: {payload.name}\ndata: {json.dumps(payload.data, separators=(',', ':'), ensure_ascii=False)}\n\n"
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n"


class Framing(Enum):
    CHAT = "chat"  # chat and text completions, jobs, logs: data lines and [DONE]
    ANTHROPIC = "anthropic"  # /v1/messages
    RESPONSES = "responses"  # /v1/responses


def _failure(error: MeshError | None, framing: Framing) -> str:
    """The event that tells a client its stream failed (the headers are sent already)."""
    status, message = (http_status(error), error.message) if error else (500, "Internal error; see the gateway log.")
    code = error.reason.lower() if error else "internal_error"
    if framing is Framing.ANTHROPIC:
        return _event(Named("error", anthropic_error_body(status, message)))
    if framing is Framing.RESPONSES:
        param = error.param if error else None
        return _event(Named("error", {"type": "error", "code": code, "message": message, "param": param}))
    if error is not None:
        return _event(mesh_error_body(error))
    return _event(error_body(status, message, code=code))


def _ending(framing: Framing) -> str:
    return _event("[DONE]") if framing is Framing.CHAT else ""


async def _events(payloads: AsyncIterator[Payload], framing: Framing = Framing.CHAT) -> AsyncIterator[str]:
    # Headers are already sent: an error mid-stream becomes one error event.
    try:
        async with contextlib.aclosing(payloads):  # type: ignore[type-var]
            async for payload in payloads:
                yield _event(payload)
    except MeshError as error:
        yield _failure(error, framing)
    except Exception:  # noqa: BLE001 - never end a stream without telling the client
        log.exception("stream failed")
        yield _failure(None, framing)
    if ending := _ending(framing):
        yield ending


_SHUTTING_DOWN = Unavailable(
    "The gateway is shutting down; retry the request.", reason="SHUTTING_DOWN", retry_after_seconds=1
)


class _SSEResponse(StreamingResponse):
    """A stream that the gateway's drain can end (services/gateway/drain.py), and that hands
    its request slot back when it ends, however it ends: finished, failed, cut by the client,
    ended by the drain, or never started."""

    def __init__(self, payloads: AsyncIterator[Payload], on_close: Callable[[], None] | None, framing: Framing) -> None:
        super().__init__(
            _events(payloads, framing),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close
        self.framing = framing

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
            ending = _failure(_SHUTTING_DOWN, self.framing) + _ending(self.framing)
            with contextlib.suppress(OSError):  # the client may have gone as well
                await send({"type": "http.response.body", "body": ending.encode(), "more_body": False})
        finally:
            if self.on_close is not None:
                self.on_close()


def sse_response(
    payloads: AsyncIterator[Payload], on_close: Callable[[], None] | None = None, framing: Framing = Framing.CHAT
) -> StreamingResponse:
    return _SSEResponse(payloads, on_close, framing)


HEARTBEAT_SECONDS = 15.0


async def with_heartbeats(
    payloads: AsyncGenerator[Payload, None], every: float = HEARTBEAT_SECONDS
) -> AsyncIterator[Payload]:
    """`payloads`, with a `: keepalive` comment after each `every` seconds of silence: a long job
    or training run sends nothing for minutes, and proxies and clients (60 s is common) would
    take the quiet stream for a dead one."""
    pending: asyncio.Task[Payload] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(payloads))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield Comment("keepalive")
                continue
            try:
                payload = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield payload
    finally:  # the client left or the source ended: close the source now (its RPC), not at GC
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})
        await payloads.aclose()


def wait_comment(state: str, model: str, position: int) -> Comment:
    return Comment(f"{state} position={position} model={model}" if position else f"{state} model={model}")


class Writer(Protocol):
    """How one API writes a streamed answer as its own events (Anthropic's content blocks,
    the Responses API's output items); `translate` walks the chunks for it."""

    def start(self, model: str, usage: Usage | None) -> list[Payload]:
        """The answer opens; `usage`: the prompt's tokens, where the first chunk counts them."""
        ...

    def text(self, text: str) -> list[Payload]: ...

    def call(self, call_id: str, name: str) -> list[Payload]:
        """A tool call begins: its id and name; its arguments follow."""
        ...

    def arguments(self, piece: str) -> list[Payload]: ...

    def end(self, finish: FinishReason, usage: Usage) -> AsyncIterator[Payload]: ...


async def translate(
    events: AsyncIterator[StreamEvent], writer: Writer, caller_used: Callable[[int, int], None]
) -> AsyncIterator[Payload]:
    """A generation's chunks as `writer`'s events; `caller_used(prompt, completion)` is told
    what it used however the stream ends. Waits become SSE comments."""
    started, streamed_calls = False, False
    usage, finish = Usage(0, 0), FinishReason.STOP
    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                chunk = event.chunk
                if wait := chunk.wait_status:
                    yield wait_comment(wait.state.value, wait.model, wait.position)
                    continue
                if not started:
                    started = True
                    for payload in writer.start(event.model, chunk.usage):
                        yield payload
                for payload in writer.text(chunk.text) if chunk.text else ():
                    yield payload
                for delta in chunk.tool_call_deltas:  # the first piece of a call names it
                    streamed_calls = True
                    for payload in [
                        *(writer.call(delta.id, delta.name) if delta.name else ()),
                        *(writer.arguments(delta.arguments) if delta.arguments else ()),
                    ]:
                        yield payload
                if chunk.tool_calls and not streamed_calls:  # a backend that sends its calls whole
                    for call in chunk.tool_calls:
                        arguments = call.arguments or ("" if chunk.finish_reason is FinishReason.LENGTH else "{}")
                        for payload in [*writer.call(call.id, call.name), *writer.arguments(arguments)]:
                            yield payload
                usage, finish = chunk.usage or usage, chunk.finish_reason or finish
    finally:
        caller_used(usage.prompt_tokens, usage.completion_tokens)
    async for payload in writer.end(finish, usage):
        yield payload


async def replay(done: Completed, writer: Writer) -> list[Payload]:
    """A whole reply walked as its stream is: one writer makes both answers, so they agree."""
    chunk = Chunk(text=done.text, finish_reason=done.finish_reason, usage=done.usage, tool_calls=done.tool_calls)

    async def events() -> AsyncIterator[StreamEvent]:
        yield StreamEvent(0, done.model, chunk, done.node)

    return [payload async for payload in translate(events(), writer, lambda prompt, completion: None)]
