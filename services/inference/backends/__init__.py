"""Backends, registered by name and imported only when a model uses them.

Heavy libraries (llama.cpp, torch, vLLM) load only when a backend is chosen.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.inference.backends.base import Backend
    from services.inference.registry import ModelSpec

# name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "gguf": ("services.inference.backends.gguf", "GGUFBackend"),
    "mock": ("services.inference.backends.mock", "MockBackend"),
}


def create_backend(spec: ModelSpec) -> Backend:
    module_name, class_name = BACKENDS[spec.backend]
    backend_class: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return backend_class(spec)
