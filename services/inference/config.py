"""Inference service settings (env prefix LLMMESH_INFERENCE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings
from services.common.registry import DEFAULT_MODELS_FILE
from services.inference.server.model_manager import Budget


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_INFERENCE_")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    models_file: Path = Field(DEFAULT_MODELS_FILE, description="The model registry YAML.")
    preload_default_model: bool = Field(True, description="Load the default model at startup, not on first use.")
    preload_models: list[str] = Field(default_factory=list, description="More models to load at startup (JSON list).")
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("LLMMESH_INFERENCE_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL for the settings store. Unset: settings live in memory until the service stops.",
    )
    max_loaded_models: int | None = Field(None, ge=1, description="Most models loaded at once. Unset: no limit.")
    memory_limit_mb: int | None = Field(None, ge=1, description="Most memory (registry memory_mb) loaded at once.")
    single_model: bool = Field(False, description="One model at a time (one GPU); swaps are serialized.")
    max_waiting_requests: int = Field(256, ge=0, description="Requests that may wait for models; more get 429.")
    max_queued_per_model: int = Field(
        32, ge=0, description="Requests that may queue for a loaded model beyond its parallel slots; more get 429."
    )
    max_wait_seconds: float = Field(
        30.0, gt=0, description="After this long waiting, a request stops others from joining the loaded model."
    )
    retry_after_seconds: int = Field(5, ge=1, description="Retry-After sent with 429 when the queue is full.")
    response_cache_max_entries: int = Field(1024, ge=1, description="Most replies the response cache holds.")
    response_cache_ttl_seconds: int = Field(3600, ge=1, description="How long a cached reply is served.")
    response_cache_persist: bool = Field(False, description="Keep the response cache on disk under data_dir.")
    idle_shutdown_seconds: float | None = Field(
        None,
        gt=0,
        description="Exit cleanly after this long without requests (`make run`: the whole mesh stops). Unset: never.",
    )

    @property
    def budget(self) -> Budget:
        return Budget(
            max_loaded_models=self.max_loaded_models,
            memory_limit_mb=self.memory_limit_mb,
            single_model=self.single_model,
            max_waiting=self.max_waiting_requests,
            max_queued_per_model=self.max_queued_per_model,
            max_wait_seconds=self.max_wait_seconds,
            retry_after_seconds=self.retry_after_seconds,
        )
