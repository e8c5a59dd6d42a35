"""POST /v1/chat/completions."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from services.fleet.client import FleetClient
from services.gateway.admission import DOORS, admit
from services.gateway.auth import Caller, get_caller
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import NODE_HEADER, generate, get_inference, get_settings
from services.gateway.protocol.chat import (
    ChatCompletion,
    ChatCompletionRequest,
    chat_completion_body,
    chat_logprobs,
    tool_call_delta_body,
    tool_calls_body,
)
from services.gateway.protocol.common import STREAMED, new_id, usage_body
from services.gateway.sse import Comment, wait_comment
from services.inference.api import StreamEvent, Usage

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=STREAMED)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    response: Response,
    settings: GatewaySettings = Depends(get_settings),
    inference: FleetClient = Depends(get_inference),
    caller: Caller = Depends(get_caller),
) -> Any:
    admit(caller, DOORS["chat"], body, [body.model])
    body.check_limits(settings)
    # The response cache is the caller's own: one tenant never reads what another was answered.
    requests = [dataclasses.replace(r, tenant=caller.owner) for r in body.to_domain(settings.max_choices)]
    completion_id = new_id("chatcmpl")
    reply = await generate(
        request,
        caller,
        body.stream,
        lambda: inference.stream_chat(requests, body.node),
        lambda events: _chunks(events, completion_id, body.n, body.include_usage_chunk, caller),
        lambda: inference.chat(requests, body.node),
    )
    if isinstance(reply, Response):
        return reply
    response.headers[NODE_HEADER] = reply[0].node
    return chat_completion_body(
        completion_id, reply[0].model, reply, usage_body([r.usage for r in reply], body.n), bool(body.logprobs)
    )


async def _chunks(
    events: AsyncIterator[StreamEvent], completion_id: str, choices: int, include_usage: bool, caller: Caller
) -> AsyncIterator[dict[str, Any] | Comment]:
    created = int(time.time())
    usages: dict[int, Usage] = {}
    streamed_calls: set[int] = set()  # choices whose calls arrived as deltas
    model = ""

    def chunk(choice_list: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choice_list,
        }
        if include_usage:  # OpenAI sends usage: null on every chunk but the last when usage is asked for
            body["usage"] = usage
        return body

    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if wait := event.chunk.wait_status:
                    yield wait_comment(wait.state.value, wait.model, wait.position)
                    continue
                if not model:
                    model = event.model
                    for index in range(choices):
                        yield chunk([_choice(index, {"role": "assistant", "content": ""}, None)])
                finish = event.chunk.finish_reason
                if event.chunk.tool_call_deltas:  # OpenAI's shape: id and name first, then argument pieces
                    streamed_calls.add(event.index)
                    deltas = {"tool_calls": [tool_call_delta_body(d) for d in event.chunk.tool_call_deltas]}
                    yield chunk([_choice(event.index, deltas, None)])
                if event.chunk.tool_calls and event.index not in streamed_calls:  # a backend that sends them whole
                    calls: dict[str, Any] = {"tool_calls": tool_calls_body(event.chunk.tool_calls, with_index=True)}
                    yield chunk([_choice(event.index, calls, None)])
                if event.chunk.text or finish:
                    delta = {"content": event.chunk.text} if event.chunk.text else {}
                    logprobs = chat_logprobs(event.chunk.logprobs).model_dump() if event.chunk.logprobs else None
                    yield chunk([_choice(event.index, delta, finish.value if finish else None, logprobs)])
                if event.chunk.usage:
                    usages[event.index] = event.chunk.usage
    finally:  # also when the stream ends early: what the finished choices used
        caller.used(sum(u.prompt_tokens for u in usages.values()), sum(u.completion_tokens for u in usages.values()))
    if include_usage:
        yield chunk([], usage_body([usages[i] for i in sorted(usages)], choices).model_dump())


def _choice(
    index: int, delta: dict[str, Any], finish_reason: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}
