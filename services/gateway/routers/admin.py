"""Operations: the model queue, hot swap, and the settings store.

GET /v1/queue; POST /admin/models/{name}/load, /admin/models/{name}/unload,
/admin/models/unload (all), /admin/models/reload; POST /admin/models/pull (from the Hugging
Face Hub, SSE progress); GET /admin/models/{name}/logs (a managed engine's output, SSE);
GET /settings/, PUT /settings/{key}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import Field

from services.gateway.auth import scope, superuser
from services.gateway.dependencies import get_home_inference
from services.gateway.protocol.common import OpenAIModel
from services.gateway.protocol.models import model_body
from services.gateway.sse import sse_response
from services.inference.api import Setting
from services.inference.client import InferenceClient

router = APIRouter()


@router.get("/v1/cache/stats", dependencies=[Depends(scope("admin"))])
async def response_cache_stats(inference: InferenceClient = Depends(get_home_inference)) -> dict[str, object]:
    """The response cache: entries, limits, hits and misses."""
    return await inference.response_cache()


@router.get("/v1/queue", dependencies=[Depends(scope("admin"))])
async def queue(inference: InferenceClient = Depends(get_home_inference)) -> dict[str, Any]:
    lines, total_waiting, max_waiting = await inference.queue()
    return {
        "models": [{**dataclasses.asdict(line), "state": line.state.value} for line in lines],
        "total_waiting": total_waiting,
        "max_waiting": max_waiting,
    }


class PullIn(OpenAIModel):
    repo: str = Field(min_length=3, max_length=200, description="Hub repository, 'owner/name'.")
    file: str = Field("", max_length=200, description="Which .gguf: a glob or part of its name ('Q4_K_M').")
    revision: str = Field("", max_length=128)
    name: str = Field("", max_length=128, description="Registry name; empty: derived from the repository.")


@router.post("/admin/models/pull", response_model=None, dependencies=[Depends(superuser)])
async def pull_model(body: PullIn, inference: InferenceClient = Depends(get_home_inference)) -> Any:
    """Server-sent events: the download's progress ({"file", "downloaded_bytes", "total_bytes"},
    with a "status" while the Hub does not answer), then the new registry model ({"model": ...}).
    A bad repository or file is a 4xx before the stream starts."""
    steps = await inference.pull_model(body.repo, body.file, body.revision, body.name)

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for file, downloaded, total, model, status in steps:
            event: dict[str, Any] = {"file": file, "downloaded_bytes": downloaded, "total_bytes": total}
            if status:
                event["status"] = status
            if model is not None:
                event["model"] = model_body(model)
            yield event

    return sse_response(events())


@router.post("/admin/models/{name:path}/load", dependencies=[Depends(superuser)])
async def load_model(name: str, inference: InferenceClient = Depends(get_home_inference)) -> dict[str, Any]:
    return model_body(await inference.load_model(name))


@router.post("/admin/models/unload", dependencies=[Depends(superuser)])
async def unload_models(inference: InferenceClient = Depends(get_home_inference)) -> dict[str, Any]:
    return {"unloaded": await inference.unload_models()}


@router.post("/admin/models/reload", dependencies=[Depends(superuser)])
async def reload_models(inference: InferenceClient = Depends(get_home_inference)) -> dict[str, Any]:
    models, unloaded = await inference.reload_models()
    return {"models": [model_body(m) for m in models], "unloaded": unloaded}


@router.post("/admin/models/{name:path}/unload", dependencies=[Depends(superuser)])
async def unload_model(name: str, inference: InferenceClient = Depends(get_home_inference)) -> dict[str, Any]:
    return model_body(await inference.unload_model(name))


@router.get("/admin/models/{name:path}/logs", response_model=None, dependencies=[Depends(superuser)])
async def model_logs(name: str, inference: InferenceClient = Depends(get_home_inference)) -> Any:
    """Server-sent events: a managed engine's output ({"line": ...}), its kept lines first, then
    each new one as it is written, until the client disconnects (llama-swap's /logs)."""
    lines = await inference.model_logs(name)

    async def events() -> AsyncIterator[dict[str, str]]:
        async for line in lines:
            yield {"line": line}

    return sse_response(events())


def _setting_body(setting: Setting) -> dict[str, str | None]:
    return {**dataclasses.asdict(setting), "updated_at": setting.updated_at or None}


@router.get("/settings/", dependencies=[Depends(superuser)])
async def list_settings(inference: InferenceClient = Depends(get_home_inference)) -> dict[str, Any]:
    return {"settings": [_setting_body(s) for s in await inference.list_settings()]}


class SettingIn(OpenAIModel):
    value: str = Field(max_length=4096, description="The new value; empty deletes the setting.")


@router.put("/settings/{key}", dependencies=[Depends(superuser)])
async def update_setting(
    key: str, body: SettingIn, inference: InferenceClient = Depends(get_home_inference)
) -> dict[str, Any]:
    return _setting_body(await inference.update_setting(key, body.value))
