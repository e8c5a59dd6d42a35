"""POST /v1/completions (raw prompts, no chat template)."""

from __future__ import annotations

import dataclasses
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
    CompletionChunks,
    CompletionRequestIn,
    completion_body,
)

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
        lambda events: CompletionChunks(completion_id, body.n, body.include_usage_chunk, echoes).stream(
            events, caller.used
        ),
        lambda: inference.complete(requests, body.node),
    )
    if isinstance(reply, Response):
        return reply
    response.headers[NODE_HEADER] = reply[0].node
    usage = usage_body([r.usage for r in reply], body.n)
    return completion_body(completion_id, reply[0].model, reply, echoes, usage, body.logprobs is not None)
