"""GET /v1/models and GET /v1/models/{model}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from services.gateway.dependencies import get_inference
from services.gateway.schemas import model_body
from services.gateway.upstream import InferenceClient

router = APIRouter()


@router.get("/v1/models")
async def list_models(inference: InferenceClient = Depends(get_inference)) -> dict[str, Any]:
    return {"object": "list", "data": [model_body(m) for m in await inference.list_models()]}


# `:path` because model names may contain slashes (e.g. "org/model").
@router.get("/v1/models/{model:path}")
async def get_model(model: str, inference: InferenceClient = Depends(get_inference)) -> dict[str, Any]:
    return model_body(await inference.get_model(model))
