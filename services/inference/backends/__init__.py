"""Backends, registered by name and imported only when a model uses them.

Heavy libraries (llama.cpp, torch, vLLM) load only when a backend is chosen.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pydantic import ValidationError

from services.common.registry import ModelRegistry, RegistryError

if TYPE_CHECKING:
    from services.common.registry import ModelSpec
    from services.inference.backends.base import Backend

# name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "gguf": ("services.inference.backends.gguf", "GGUFBackend"),
    "mock": ("services.inference.backends.mock", "MockBackend"),
    "rest": ("services.inference.backends.rest.backend", "RestBackend"),
    "transformers": ("services.inference.backends.transformers_backend", "TransformersBackend"),
    "vllm": ("services.inference.backends.vllm_backend", "VllmBackend"),
    "mlx": ("services.inference.backends.mlx_backend", "MlxBackend"),
    # managed model servers: engine processes and containers
    "llama-server": ("services.inference.backends.managed.backend", "LlamaServerBackend"),
    "command": ("services.inference.backends.managed.backend", "CommandBackend"),
    "container": ("services.inference.backends.managed.backend", "ContainerBackend"),
}


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as `name`. Importing it must not import its heavy library:
    that happens in `load`, which fails with a clear message where the library cannot run."""
    module_name, class_name = BACKENDS[name]
    return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]


def create_backend(spec: ModelSpec) -> Backend:
    return backend_class(spec.backend)(spec)


def check_options(registry: ModelRegistry) -> None:
    """Every entry's options against its backend's Options model: an unknown key or a wrong
    type is a RegistryError naming the model and the key, at startup, not at first load."""
    for spec in registry:
        try:
            backend_class(spec.backend).Options.model_validate(spec.options)
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in first["loc"]) or "options"
            raise RegistryError(f"model '{spec.name}' ({spec.backend}): option '{key}': {first['msg']}") from None
