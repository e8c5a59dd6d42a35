"""Errors in the middle of a stream: one error event, then [DONE]."""

import asyncio
import json
from collections.abc import AsyncGenerator

from services.common.errors import Unavailable
from services.gateway.sse import Comment, Framing, Named, Payload, _events, with_heartbeats


async def test_mid_stream_error_becomes_one_event_then_done() -> None:
    async def payloads():
        yield {"n": 1}
        raise Unavailable("inference went away")

    events = [event async for event in _events(payloads())]
    assert events[0] == 'data: {"n":1}\n\n'
    error = json.loads(events[1].removeprefix("data: "))["error"]
    assert error["code"] == "unavailable" and error["type"] == "server_error"
    assert events[2] == "data: [DONE]\n\n"
    assert len(events) == 3


async def test_unexpected_errors_hide_the_traceback() -> None:
    async def payloads():
        raise RuntimeError("secret internals")
        yield {}

    events = [event async for event in _events(payloads())]
    assert "secret" not in events[0]
    assert events[-1] == "data: [DONE]\n\n"


async def test_named_event_framings_end_with_an_error_event_and_no_done() -> None:
    async def payloads():
        yield Named("message_start", {"type": "message_start"})
        raise Unavailable("inference went away")

    anthropic = [event async for event in _events(payloads(), Framing.ANTHROPIC)]
    assert anthropic[0] == 'event: message_start\ndata: {"type":"message_start"}\n\n'
    name, data = anthropic[1].split("\n")[:2]
    assert name == "event: error" and len(anthropic) == 2
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "inference went away"},
    }
    responses = [event async for event in _events(payloads(), Framing.RESPONSES)]
    error = json.loads(responses[1].split("\n")[1].removeprefix("data: "))
    assert error["type"] == "error" and error["code"] == "unavailable" and len(responses) == 2


async def test_a_quiet_stream_carries_keepalive_comments_and_ends_with_its_source() -> None:
    async def slow() -> AsyncGenerator[Payload, None]:
        yield {"state": "running"}
        await asyncio.sleep(0.25)  # a training run that says nothing for a while
        yield {"state": "succeeded"}

    seen = [payload async for payload in with_heartbeats(slow(), every=0.05)]
    assert seen[0] == {"state": "running"} and seen[-1] == {"state": "succeeded"}
    assert 2 <= seen.count(Comment("keepalive")) == len(seen) - 2
