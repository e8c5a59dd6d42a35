"""Which model a request name reaches: registry names, the slots `live` and `background`,
and the tiers `light`, `medium` and `heavy`.

Slots and tiers resolve through a configuration cascade, first match wins:

    backend  model.live.backend -> LIVE_MODEL_BACKEND -> MODEL_BACKEND -> the model's own
    model    model.live.name    -> LIVE_MODEL_NAME    -> MODEL_NAME    -> default_model

`model.*` keys come from the settings store. The background slot falls back to
whatever live resolved to. Tiers: model.<tier>.name -> <TIER>_MODEL_NAME -> the
registry's `tiers:`. The jarvis-llm-proxy names (JARVIS_LIVE_MODEL_BACKEND, ...)
are accepted as aliases of the environment variables.

A slot's model is a registry name, or else a model file path (a registry entry
is made for it). Specs that reach the same (backend, path) share one instance.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import compat
from services.common.errors import InvalidArgument, ModelNotFound
from services.common.registry import ModelRegistry, ModelSpec
from services.inference.backends import BACKENDS, backend_class

log = logging.getLogger(__name__)

SLOTS = ("live", "background")
TIERS = ("light", "medium", "heavy")


class RoutingEnvironment(BaseSettings):
    """The cascade's environment layer. Unprefixed names, as the design documents define them."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    live_model_backend: str | None = compat.env(
        "LIVE_MODEL_BACKEND",
        description="Backend of the live slot; the settings store's model.live.backend wins over it.",
    )
    live_model_name: str | None = compat.env(
        "LIVE_MODEL_NAME",
        description="Model of the live slot (a registry name or a model file); model.live.name wins over it.",
    )
    background_model_backend: str | None = compat.env(
        "BACKGROUND_MODEL_BACKEND", description="Backend of the background slot (jobs). Unset: the live slot's."
    )
    background_model_name: str | None = compat.env(
        "BACKGROUND_MODEL_NAME", description="Model of the background slot (jobs). Unset: the live slot's."
    )
    model_backend: str | None = compat.env(
        "MODEL_BACKEND", description="Backend of both slots where neither names one."
    )
    model_name: str | None = compat.env(
        "MODEL_NAME", description="Model of both slots where neither names one. Unset: the registry's default_model."
    )
    light_model_name: str | None = compat.env(
        "LIGHT_MODEL_NAME",
        description="Model of the light tier; model.light.name wins over it. Unset: the registry's tiers.",
    )
    medium_model_name: str | None = compat.env(
        "MEDIUM_MODEL_NAME",
        description="Model of the medium tier; model.medium.name wins over it. Unset: the registry's tiers.",
    )
    heavy_model_name: str | None = compat.env(
        "HEAVY_MODEL_NAME",
        description="Model of the heavy tier; model.heavy.name wins over it. Unset: the registry's tiers.",
    )


# key -> what it controls (shown by ListSettings and GET /settings/)
SETTING_KEYS: dict[str, str] = {
    **{f"model.{slot}.backend": f"Backend of the {slot} slot: {', '.join(sorted(BACKENDS))}." for slot in SLOTS},
    **{f"model.{slot}.name": f"Model of the {slot} slot: a registry name or a model file path." for slot in SLOTS},
    **{f"model.{tier}.name": f"Model of the {tier} tier: a registry name." for tier in TIERS},
}


PULLED_PREFIX = "pulled."  # settings that hold pulled models' registry entries (JSON)


def with_pulled(registry: ModelRegistry, stored: Mapping[str, str]) -> ModelRegistry:
    """The registry file's models plus those pulled since (kept in the settings store). A pulled
    entry that no longer parses, or whose name the file now uses, is skipped with a warning."""
    pulled = []
    for key, value in sorted(stored.items()):
        if not key.startswith(PULLED_PREFIX):
            continue
        try:
            spec = ModelSpec.model_validate_json(value)
        except ValueError as error:
            log.warning("skipping pulled model %s: %s", key, error)
            continue
        if any(registry.find(name) for name in (spec.name, *spec.aliases)):
            log.warning("skipping pulled model %s: the registry file has a model of that name", spec.name)
            continue
        pulled.append(spec)
    if not pulled:
        return registry
    return ModelRegistry.from_specs([*registry.models, *pulled], registry.default_model, registry.tiers)


def effective_setting(key: str, routes: Mapping[str, ModelSpec], registry: ModelRegistry) -> str:
    """What a `model.<route>.*` key is in force now, stored or not: the route's backend, or its
    model (the registry name, or the file a made entry serves)."""
    _, route, field = key.split(".")
    spec = routes.get(route)
    if spec is None:
        return ""
    if field == "backend":
        return spec.backend
    return spec.name if registry.find(spec.name) is not None else spec.path or ""


def require_known_key(key: str) -> None:
    if key not in SETTING_KEYS:
        raise InvalidArgument(f"Unknown setting '{key}'. Known settings: {', '.join(SETTING_KEYS)}.", param="key")


def validate_setting(key: str, value: str, registry: ModelRegistry) -> str:
    """The normalized value, or InvalidArgument naming what is wrong."""
    require_known_key(key)
    value = value.strip()
    if key.endswith(".backend"):
        value = value.lower()
        if value not in BACKENDS:
            raise InvalidArgument(
                f"'{key}' must be one of {', '.join(sorted(BACKENDS))}; got '{value}'.", param="value"
            )
    elif key.split(".")[1] in TIERS:
        if registry.find(value) is None:
            raise InvalidArgument(
                f"'{key}' must name a registry model ({', '.join(registry.names)}); got '{value}'.", param="value"
            )
    elif len(value) > 1024 or re.search(r"[\x00-\x1f]", value):
        raise InvalidArgument(f"'{key}' must be a model name or a file path.", param="value")
    return value


@dataclass(frozen=True)
class _Choice:
    backend: str | None
    model: str | None


def _spec_for(choice: _Choice, registry: ModelRegistry, route: str) -> ModelSpec:
    """The registry entry, or an entry made for a model file or remote model name. Made entries for
    slot-specific backends (REST: a URL per slot) carry the route as `options.slot`."""
    spec = registry.find(choice.model) if choice.model else registry.resolve("")
    if spec is None:  # not a registry name: a model file, or a remote model's name
        assert choice.model is not None
        backend = choice.backend or "gguf"
        name = re.sub(r"[^A-Za-z0-9._:/-]", "-", Path(choice.model).name) or "model"
        return ModelSpec(name=name, backend=backend, path=choice.model, options=_route_option(backend, route))
    if choice.backend and choice.backend != spec.backend:
        options = {**spec.options, **_route_option(choice.backend, route)}
        return spec.model_copy(update={"backend": choice.backend, "options": options})
    return spec


def _route_option(backend: str, route: str) -> dict[str, str]:
    return {"slot": route} if backend_class(backend).slot_specific else {}


def build_routes(registry: ModelRegistry, stored: Mapping[str, str], env: RoutingEnvironment) -> dict[str, ModelSpec]:
    """Route name (slot or tier) -> the model it reaches now."""

    def first(*values: str | None) -> str | None:
        return next((v for v in values if v), None)

    live = _Choice(
        backend=first(stored.get("model.live.backend"), env.live_model_backend, env.model_backend),
        model=first(stored.get("model.live.name"), env.live_model_name, env.model_name),
    )
    background = _Choice(
        backend=first(stored.get("model.background.backend"), env.background_model_backend, live.backend),
        model=first(stored.get("model.background.name"), env.background_model_name, live.model),
    )
    routes = {
        "live": _spec_for(_normalized(live), registry, "live"),
        "background": _spec_for(_normalized(background), registry, "background"),
    }
    for tier in TIERS:
        model = first(stored.get(f"model.{tier}.name"), getattr(env, f"{tier}_model_name"), registry.tiers.get(tier))
        if model:
            routes[tier] = _spec_for(_Choice(None, model), registry, tier)
    return routes


def _normalized(choice: _Choice) -> _Choice:
    return _Choice(choice.backend.lower() if choice.backend else None, choice.model)


class ModelRouter:
    """Resolves request names; `update` swaps in new routes after a settings reload."""

    def __init__(self, registry: ModelRegistry, routes: dict[str, ModelSpec] | None = None) -> None:
        self.registry = registry
        self.routes = routes or {}

    def update(self, routes: dict[str, ModelSpec]) -> None:
        self.routes = routes

    def resolve(self, name: str) -> ModelSpec:
        """Slots and tiers first, then registry names and aliases; empty is the default model."""
        if not name:
            return self.registry.resolve("")
        spec = self.routes.get(name) or self.registry.find(name)
        if spec is None:
            raise ModelNotFound(name, sorted({*self.routes, *self.registry.names}))
        return spec

    def specs(self) -> list[ModelSpec]:
        """Every model: the registry's, then those that only a slot reaches (model files)."""
        specs = {spec.name: spec for spec in self.registry}
        for spec in self.routes.values():
            specs.setdefault(spec.name, spec)
        return list(specs.values())

    def routes_to(self, spec: ModelSpec) -> tuple[str, ...]:
        """Slot and tier names that resolve to `spec` (each is listed once, after its model, even
        when other entries share the model's loaded instance)."""
        return tuple(name for name, target in self.routes.items() if target.name == spec.name)
