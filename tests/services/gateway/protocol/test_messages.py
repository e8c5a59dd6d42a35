"""Anthropic Messages requests: tool_use and tool_result pair up as Anthropic requires, and a
message is the same walk streamed or whole."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.errors import InvalidArgument
from services.gateway.protocol.messages import MessageBlocks, MessagesRequest
from services.gateway.sse import replay
from services.inference.api import Completed, FinishReason, ToolCall, Usage


def use(*ids: str) -> dict[str, Any]:
    blocks = [{"type": "tool_use", "id": i, "name": "get_weather", "input": {}} for i in ids]
    return {"role": "assistant", "content": blocks}


def results(*ids: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": "21 C"} for i in ids]}


def request(*messages: dict[str, Any]) -> MessagesRequest:
    return MessagesRequest(model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}, *messages])


def test_every_tool_use_is_answered_in_the_next_turn() -> None:
    request(use("a", "b"), results("a", "b")).to_domain()
    request(use("a")).to_domain()  # the calls are still to be made
    for messages, problem in [
        ((use("a", "b", "c", "d"), results("a")), "without `tool_result` blocks immediately after: b, c, d"),
        ((use("a"), {"role": "user", "content": "and?"}), "without `tool_result`"),
        ((use("a"), {"role": "assistant", "content": "x"}), "without `tool_result`"),
        ((results("z"),), "unexpected `tool_use_id` found in `tool_result` blocks: z"),
    ]:
        with pytest.raises(InvalidArgument) as error:
            request(*messages).to_domain()
        assert problem in error.value.message and error.value.param.startswith("messages.")


def test_ids_in_the_error_are_bounded() -> None:
    with pytest.raises(InvalidArgument) as error:
        request(use(*(f"{i}" * 200 for i in range(9))), results()).to_domain()
    assert len(error.value.message) < 600 and "(and 5 more)" in error.value.message


async def test_a_whole_message_is_the_streams_walk() -> None:
    cut = ToolCall("call_1", "get_weather", '{"city": "Paris", "when": "tomor')
    done = Completed(model="m", text="", finish_reason=FinishReason.LENGTH, usage=Usage(9, 16), tool_calls=(cut,))
    blocks = MessageBlocks("msg_1")
    events = await replay(done, blocks)
    assert [e.name for e in events] == [  # type: ignore[union-attr]
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert blocks.message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
    ]
    assert blocks.message["stop_reason"] == "max_tokens" and blocks.message["usage"] == {
        "input_tokens": 9,
        "output_tokens": 16,
    }
