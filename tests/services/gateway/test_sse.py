"""Errors in the middle of a stream: one error event, then [DONE]."""

import json

from services.common.errors import Unavailable
from services.gateway.sse import _events


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
