"""POST /v1/completions (raw prompts, no chat template)."""

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
from services.gateway.protocol.common import STREAMED, new_id, usage_body
from services.gateway.protocol.completions import (
    Completion,
    CompletionRequestIn,
    completion_body,
    completion_logprobs,
)
from services.gateway.sse import Comment, wait_comment
from services.inference.api import StreamEvent, Usage

router = APIRouter()


@router.post("/v1/completions", response_model=Completion, responses=STREAMED)
async def create_completion(
    body: CompletionRequestIn,
    request: Request,
    response: Response,
    settings: GatewaySettings = Depends(get_settings),
    inference: FleetClient = Depends(get_inference),
    caller: Caller = Depends(get_caller),
) -> Any:
    admit(caller, DOORS["completions"], body, [body.model])
    body.check_limits(settings)
    # The response cache is the caller's own: one tenant never reads what another was answered.
    requests = [dataclasses.replace(r, tenant=caller.owner) for r in body.to_domain(settings.max_choices)]
    completion_id = new_id("cmpl")
    echoes = [r.prompt if body.echo else "" for r in requests]  # `echo`: each choice starts with its prompt
    reply = await generate(
        request,
        caller,
        body.stream,
        lambda: inference.stream_complete(requests, body.node),
        lambda events: _chunks(events, completion_id, body.n, body.include_usage_chunk, caller, echoes),
        lambda: inference.complete(requests, body.node),
    )
    if isinstance(reply, Response):
        return reply
    response.headers[NODE_HEADER] = reply[0].node
    usage = usage_body([r.usage for r in reply], body.n)
    return completion_body(completion_id, reply[0].model, reply, echoes, usage, body.logprobs is not None)


async def _chunks(
    events: AsyncIterator[StreamEvent],
    completion_id: str,
    choices_per_prompt: int,
    include_usage: bool,
    caller: Caller,
    echoes: list[str],
) -> AsyncIterator[dict[str, Any] | Comment]:
    created = int(time.time())
    usages: dict[int, Usage] = {}
    offsets = [len(echo) for echo in echoes]  # where each choice's next token starts in its text
    echoed: set[int] = set()
    model = ""

    def chunk(choice_list: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choice_list,
        }
        if include_usage:
            body["usage"] = usage
        return body

    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if wait := event.chunk.wait_status:
                    yield wait_comment(wait.state.value, wait.model, wait.position)
                    continue
                model = event.model
                if echoes[event.index] and event.index not in echoed:  # each prompt before its choice's text
                    echoed.add(event.index)
                    prompt = event.chunk.prompt_logprobs  # the scored prompt (echo with logprobs)
                    scored = completion_logprobs((), 0, prompt).model_dump() if prompt else None
                    yield chunk([_choice(event.index, echoes[event.index], None, scored)])
                finish = event.chunk.finish_reason
                if event.chunk.text or finish:
                    logprobs = None
                    if event.chunk.logprobs:
                        logprobs = completion_logprobs(event.chunk.logprobs, offsets[event.index]).model_dump()
                        offsets[event.index] += sum(len(t.token) for t in event.chunk.logprobs)
                    text, reason = event.chunk.text, finish.value if finish else None
                    yield chunk([_choice(event.index, text, reason, logprobs)])
                if event.chunk.usage:
                    usages[event.index] = event.chunk.usage
    finally:  # also when the stream ends early: what the finished choices used
        caller.used(sum(u.prompt_tokens for u in usages.values()), sum(u.completion_tokens for u in usages.values()))
    if include_usage:
        yield chunk([], usage_body([usages[i] for i in sorted(usages)], choices_per_prompt).model_dump())


def _choice(index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}
