"""/v1/models: the model cards of chat and embedding models."""

from __future__ import annotations

from typing import Any

from services.embeddings.client import EmbeddingModelInfo
from services.fleet.client import NodePresence, NodeView
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
