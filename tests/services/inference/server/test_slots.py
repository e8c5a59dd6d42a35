"""Slot and tier resolution: every layer of the cascade, legacy names, and shared instances."""

import pytest

from services.common.errors import InvalidArgument, ModelNotFound
from services.common.registry import ModelRegistry, ModelSpec
from services.inference.server.slots import ModelRouter, RoutingEnvironment, build_routes, validate_setting

ALL_ROUTING_VARIABLES = [
    f"{prefix}{name}"
    for prefix in ("", "JARVIS_")
    for name in (
        "LIVE_MODEL_BACKEND",
        "LIVE_MODEL_NAME",
        "BACKGROUND_MODEL_BACKEND",
        "BACKGROUND_MODEL_NAME",
        "MODEL_BACKEND",
        "MODEL_NAME",
        "LIGHT_MODEL_NAME",
        "MEDIUM_MODEL_NAME",
        "HEAVY_MODEL_NAME",
    )
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_ROUTING_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def registry() -> ModelRegistry:
    return ModelRegistry.from_specs(
        [
            ModelSpec(name="small", backend="mock"),
            ModelSpec(name="big", backend="mock"),
            ModelSpec(name="huge", backend="gguf", path="/models/huge.gguf"),
        ],
        default_model="small",
        tiers={"light": "small", "heavy": "huge"},
    )


def routes(registry: ModelRegistry, stored: dict[str, str] | None = None) -> dict[str, ModelSpec]:
    return build_routes(registry, stored or {}, RoutingEnvironment())


def test_defaults_live_and_background_reach_the_default_model(registry) -> None:
    resolved = routes(registry)
    assert resolved["live"].name == resolved["background"].name == "small"


def test_global_env_beats_default(registry, monkeypatch) -> None:
    monkeypatch.setenv("MODEL_NAME", "big")
    assert routes(registry)["live"].name == "big"


def test_slot_env_beats_global_env(registry, monkeypatch) -> None:
    monkeypatch.setenv("MODEL_NAME", "big")
    monkeypatch.setenv("LIVE_MODEL_NAME", "huge")
    assert routes(registry)["live"].name == "huge"


def test_settings_store_beats_every_env(registry, monkeypatch) -> None:
    monkeypatch.setenv("MODEL_NAME", "big")
    monkeypatch.setenv("LIVE_MODEL_NAME", "huge")
    assert routes(registry, {"model.live.name": "small"})["live"].name == "small"


def test_background_falls_back_to_live_then_has_its_own_layers(registry, monkeypatch) -> None:
    monkeypatch.setenv("LIVE_MODEL_NAME", "big")
    assert routes(registry)["background"].name == "big"
    monkeypatch.setenv("BACKGROUND_MODEL_NAME", "huge")
    assert routes(registry)["background"].name == "huge"
    assert routes(registry, {"model.background.name": "small"})["background"].name == "small"


def test_jarvis_names_are_accepted(registry, monkeypatch) -> None:
    monkeypatch.setenv("JARVIS_MODEL_NAME", "big")
    monkeypatch.setenv("JARVIS_BACKGROUND_MODEL_NAME", "huge")
    monkeypatch.setenv("JARVIS_LIVE_MODEL_BACKEND", "GGUF")  # jarvis wrote backends in capitals
    resolved = routes(registry)
    assert resolved["live"].name == "big" and resolved["live"].backend == "gguf"
    assert resolved["background"].name == "huge"
    assert resolved["background"].backend == "gguf"  # falls back to live's backend


def test_backend_cascade(registry, monkeypatch) -> None:
    assert routes(registry)["live"].backend == "mock"  # the model's own
    monkeypatch.setenv("MODEL_BACKEND", "gguf")
    assert routes(registry)["live"].backend == "gguf"
    monkeypatch.setenv("LIVE_MODEL_BACKEND", "mock")
    assert routes(registry)["live"].backend == "mock"
    assert routes(registry, {"model.live.backend": "gguf"})["live"].backend == "gguf"


def test_a_model_file_path_becomes_a_model_and_both_slots_share_it(registry, monkeypatch) -> None:
    monkeypatch.setenv("MODEL_NAME", "/models/Qwen3-14B-Q6_K.gguf")
    resolved = routes(registry)
    live, background = resolved["live"], resolved["background"]
    assert live.name == "Qwen3-14B-Q6_K.gguf" and live.backend == "gguf" and live.path == "/models/Qwen3-14B-Q6_K.gguf"
    assert live.instance_key == background.instance_key


def test_a_path_shared_with_a_registry_entry_shares_its_instance(registry, monkeypatch) -> None:
    monkeypatch.setenv("BACKGROUND_MODEL_NAME", "/models/huge.gguf")
    resolved = routes(registry)
    assert resolved["background"].instance_key == registry.resolve("huge").instance_key


def test_tiers_yaml_env_store(registry, monkeypatch) -> None:
    assert routes(registry)["light"].name == "small"
    assert "medium" not in routes(registry)
    monkeypatch.setenv("MEDIUM_MODEL_NAME", "big")
    assert routes(registry)["medium"].name == "big"
    assert routes(registry, {"model.heavy.name": "big"})["heavy"].name == "big"


def test_router_resolves_slots_tiers_and_names(registry) -> None:
    router = ModelRouter(registry, routes(registry))
    assert router.resolve("heavy").name == "huge"
    assert router.resolve("big").name == "big"
    assert router.resolve("").name == "small"
    assert set(router.routes_to(registry.resolve("small"))) == {"live", "background", "light"}
    with pytest.raises(ModelNotFound, match="background, big, heavy"):
        router.resolve("nope")


@pytest.mark.parametrize(
    ("key", "value", "param"),
    [
        ("model.nope.name", "x", "key"),
        ("model.live.backend", "tensorflow", "value"),
        ("model.light.name", "not-a-model", "value"),
        ("model.live.name", "bad\nname", "value"),
    ],
)
def test_bad_settings_are_rejected(registry, key, value, param) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_setting(key, value, registry)
    assert raised.value.param == param


def test_settings_are_normalized(registry) -> None:
    assert validate_setting("model.live.backend", " GGUF ", registry) == "gguf"
