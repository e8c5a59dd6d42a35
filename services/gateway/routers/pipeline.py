"""Model builds (seed file -> adapter -> validation -> merged model -> GGUF), superuser only.

Every endpoint needs a superuser bearer JWT: a build takes the machine for minutes
and writes gigabytes. No JWT, a bad signature or an expired token is 401; an app
API key is 403.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request

from services.gateway.auth import superuser
from services.gateway.dependencies import get_trainer
from services.gateway.protocol.training import PipelineBuildIn
from services.gateway.sse import sse_response
from services.trainer.client import TrainerClient, as_json

router = APIRouter(prefix="/v1/pipeline", dependencies=[Depends(superuser)])


@router.post("/build", status_code=202)
async def build(body: PipelineBuildIn, trainer: TrainerClient = Depends(get_trainer)) -> dict[str, Any]:
    """202 with the started build; 400 (failed_precondition) while another build runs."""
    return as_json(await trainer.build_pipeline(body.to_pb()))


@router.get("/status")
async def status(trainer: TrainerClient = Depends(get_trainer)) -> dict[str, Any]:
    return as_json(await trainer.get_pipeline())


@router.post("/cancel")
async def cancel(trainer: TrainerClient = Depends(get_trainer)) -> dict[str, Any]:
    return as_json(await trainer.cancel_pipeline())


@router.get("/logs", response_model=None)
async def logs(request: Request, trainer: TrainerClient = Depends(get_trainer)) -> Any:
    """Server-sent events: each log line ({time, step, message}), then `[DONE]` when the build ends."""
    lines = await trainer.pipeline_logs()

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for line in lines:
            yield {"time": line.time.ToNanoseconds() / 1e9, "step": line.step, "message": line.message}

    return sse_response(events())


@router.get("/artifacts")
async def artifacts(trainer: TrainerClient = Depends(get_trainer)) -> dict[str, Any]:
    found = await trainer.list_artifacts()
    return {"object": "list", "data": [as_json(artifact) for artifact in found]}
