"""Gateway settings (env prefix LLMMESH_GATEWAY_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_GATEWAY_")

    port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    inference_target: str = Field("127.0.0.1:50051", description="host:port of the inference gRPC service.")
    embeddings_target: str = Field("127.0.0.1:50052", description="host:port of the embeddings gRPC service.")
    scheduler_target: str = Field("127.0.0.1:50053", description="host:port of the scheduler gRPC service.")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    request_timeout_seconds: float = Field(600.0, gt=0, description="Deadline for each gRPC call.")
    health_timeout_seconds: float = Field(2.0, gt=0, description="Deadline for upstream health checks.")
    max_choices: int = Field(8, ge=1, description="Largest accepted `n` (choices per request).")
