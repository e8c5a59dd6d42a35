"""/v1/models: a model card."""

from __future__ import annotations

from typing import Any

from services.inference.client import (
    ModelInfo,
)


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
