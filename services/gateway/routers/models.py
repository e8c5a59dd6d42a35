"""GET /v1/models and GET /v1/models/{model}: chat models from every node of the fleet (with the
nodes that serve each), plus embedding models; to an Anthropic client, the chat models in the
shape of Anthropic's Models API."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from services.common.errors import MeshError, NotFound
from services.embeddings.client import EmbeddingModelInfo, EmbeddingsClient
from services.fleet.client import FleetClient
from services.gateway.auth import get_caller
from services.gateway.dependencies import get_embeddings, get_inference
from services.gateway.errors import speaks_anthropic
from services.gateway.protocol.models import (
    anthropic_model_body,
    anthropic_page,
    embedding_model_body,
    model_body,
    nodes_body,
)

router = APIRouter()
log = logging.getLogger(__name__)


async def _embedding_models(embeddings: EmbeddingsClient) -> list[EmbeddingModelInfo]:
    try:
        return await embeddings.list_models()
    except MeshError as error:  # the chat models are still worth listing
        log.warning("embeddings service not listed: %s", error.message)
        return []


@router.get("/v1/models", dependencies=[Depends(get_caller)])
async def list_models(
    request: Request,
    limit: int = Query(20, ge=1, le=1000, description="Anthropic's page size."),
    after_id: str = Query("", description="Anthropic's cursor: the page right after this model."),
    before_id: str = Query("", description="Anthropic's cursor: the page right before this model."),
    inference: FleetClient = Depends(get_inference),
    embeddings: EmbeddingsClient = Depends(get_embeddings),
) -> dict[str, Any]:
    catalog = await inference.catalog()
    if speaks_anthropic(request):  # /v1/messages takes chat models only
        cards = [anthropic_model_body(name, e.info) for e in catalog for name in (e.info.name, *e.info.aliases)]
        return anthropic_page(cards, limit, after_id, before_id)
    chat_models = []
    for entry in catalog:
        body = {**model_body(entry.info), **nodes_body(entry.nodes)}
        chat_models.append(body)
        # Slots, tiers and aliases are names too: list them, with the model each reaches.
        chat_models += [{**body, "id": alias, "resolves_to": entry.info.name} for alias in entry.info.aliases]
    embedding_models = [embedding_model_body(m) for m in await _embedding_models(embeddings)]
    return {"object": "list", "data": chat_models + embedding_models}


# `:path` because model names may contain slashes (e.g. "org/model").
@router.get("/v1/models/{model:path}", dependencies=[Depends(get_caller)])
async def get_model(
    model: str,
    request: Request,
    inference: FleetClient = Depends(get_inference),
    embeddings: EmbeddingsClient = Depends(get_embeddings),
) -> dict[str, Any]:
    try:
        info = await inference.get_model(model)
    except NotFound:
        if speaks_anthropic(request):
            raise
        for candidate in await _embedding_models(embeddings):
            if model in (candidate.name, *candidate.aliases):
                return embedding_model_body(candidate)
        raise
    return anthropic_model_body(info.name, info) if speaks_anthropic(request) else model_body(info)
