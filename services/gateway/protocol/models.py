"""/v1/models: the model cards of chat and embedding models, in OpenAI's shape, and of chat
models in Anthropic's (its Models API, paged by after_id and before_id)."""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidArgument
from services.embeddings.client import EmbeddingModelInfo
from services.fleet.client import NodePresence, NodeView
from services.gateway.protocol.pages import page_after
from services.inference.api import ModelInfo


def model_body(model: ModelInfo) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": "llmmesh",
        # Mesh extensions: clients that don't know them ignore them.
        "type": "chat",
        "backend": model.backend,
        "state": model.state.value,
        "aliases": list(model.aliases),
        "context_length": model.context_length,
        "is_default": model.is_default,
        "memory_mb": model.memory_mb,
        "requests_running": model.requests_running,
    }


def nodes_body(nodes: tuple[NodePresence, ...]) -> dict[str, Any]:
    """Where a model runs: a model whose nodes are all down stays listed, unavailable."""
    return {
        "available": any(n.available for n in nodes),
        "nodes": [{"node": n.node, "available": n.available, "loaded": n.loaded} for n in nodes],
    }


def node_body(node: NodeView) -> dict[str, Any]:
    return {
        "id": node.name,
        "object": "node",
        "kind": node.kind,
        "address": node.address,
        "tier": node.tier,
        "weight": node.weight,
        "capacity": node.capacity,
        "healthy": node.healthy,
        "circuit": node.circuit.value,
        "requests_in_flight": node.in_flight,
        "reported_running": node.running,
        "reported_waiting": node.waiting,
        "models": list(node.models),
        "requests": node.requests,
        "failovers": node.failovers,
        "recent_errors": [{"at": int(at), "message": message} for at, message in node.recent_errors],
    }


def embedding_model_body(model: EmbeddingModelInfo) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": "llmmesh",
        "type": "embedding",
        "aliases": list(model.aliases),
        "dimensions": model.dimensions,
        "max_input_tokens": model.max_input_tokens,
        "rerank_scorer": model.rerank_scorer.value,
    }


UNKNOWN_RELEASE = "1970-01-01T00:00:00Z"  # Anthropic's created_at for an unknown release date


def anthropic_model_body(name: str, model: ModelInfo) -> dict[str, Any]:
    """A model (or one of its aliases, by `name`) as Anthropic's ModelInfo."""
    return {
        "type": "model",
        "id": name,
        "display_name": name,
        "created_at": UNKNOWN_RELEASE,
        "lifecycle": "active",
        "max_input_tokens": model.context_length or None,
        "max_tokens": model.context_length or None,
    }


def anthropic_page(cards: list[dict[str, Any]], limit: int, after_id: str, before_id: str) -> dict[str, Any]:
    """One page of Anthropic's list: `limit` cards right after `after_id`, or right before
    `before_id`; has_more tells whether more lie that way."""
    if after_id and before_id:
        raise InvalidArgument("Pass 'after_id' or 'before_id', not both.", param="before_id")
    ids = [card["id"] for card in cards]
    if before_id:  # the page after it, walking backwards
        page, more = page_after(cards[::-1], ids[::-1], before_id, limit, "a model", param="before_id")
        page.reverse()
    else:
        page, more = page_after(cards, ids, after_id, limit, "a model", param="after_id")
    return {
        "data": page,
        "has_more": more,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }
