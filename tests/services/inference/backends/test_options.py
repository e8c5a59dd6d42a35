"""Typed backend options: a registry entry's options are checked against its backend's model
when inference starts."""

from __future__ import annotations

import pytest

from services.common.registry import DEFAULT_MODELS_FILE, ModelRegistry, ModelSpec, RegistryError
from services.inference.backends import check_options


@pytest.mark.parametrize(
    ("backend", "options", "named"),
    [
        ("gguf", {"n_thread": 2}, "n_thread"),  # a typo
        ("gguf", {"n_parallel": "many"}, "n_parallel"),
        ("mock", {"token_delay_seconds": -1}, "token_delay_seconds"),
        ("rest", {"provider": "nope"}, "provider"),
    ],
)
def test_a_bad_backend_option_stops_startup_naming_the_model_and_key(backend: str, options: dict, named: str) -> None:
    registry = ModelRegistry.from_specs([ModelSpec(name="m", backend=backend, path="x", options=options)], "m")
    with pytest.raises(RegistryError, match=f"model 'm' \\({backend}\\): option '{named}'"):
        check_options(registry)


def test_the_shipped_registry_has_valid_options() -> None:
    check_options(ModelRegistry.from_yaml(DEFAULT_MODELS_FILE))
