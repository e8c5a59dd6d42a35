"""Inference service settings (env prefix LLMMESH_INFERENCE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings

DEFAULT_MODELS_FILE = Path(__file__).with_name("models.yaml")


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_INFERENCE_")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    models_file: Path = Field(DEFAULT_MODELS_FILE, description="The model registry YAML.")
    preload_default_model: bool = Field(True, description="Load the default model at startup, not on first use.")
    preload_models: list[str] = Field(default_factory=list, description="More models to load at startup (JSON list).")
