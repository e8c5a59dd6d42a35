"""/v1/models: the model cards of chat and embedding models."""

from __future__ import annotations

from typing import Any

from services.embeddings.client import EmbeddingModelInfo
from services.inference.client import ModelInfo


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
