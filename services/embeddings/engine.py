"""Embeddings use cases, independent of gRPC."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.common.errors import ModelNotFound, Unavailable
from services.embeddings.batcher import MicroBatcher
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.domain import (
    EmbeddingModelInfo,
    EmbedRequest,
    EmbedResult,
    Encoded,
    Limits,
    Ranked,
    RerankRequest,
    RerankResult,
    Scorer,
)
from services.embeddings.encoder import SentenceEncoder


class EmbeddingsEngine:
    """Serves one embedding model (and optionally a cross-encoder for rerank)."""

    def __init__(self, settings: EmbeddingsSettings) -> None:
        self.settings = settings
        self.limits = Limits(max_items=settings.max_items, max_text_chars=settings.max_text_chars)
        # One thread owns the model; torch parallelizes inside each call.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddings")
        self._encoder: SentenceEncoder | None = None
        self.batcher: MicroBatcher[str, Encoded] | None = None

    async def load(self) -> None:
        settings = self.settings
        self._encoder = await asyncio.get_running_loop().run_in_executor(
            self._executor, SentenceEncoder, settings.model_path, settings.device, settings.reranker_path
        )
        self.batcher = MicroBatcher(
            self._encoder.encode,
            executor=self._executor,
            window_seconds=settings.batch_window_ms / 1000,
            max_batch=settings.max_batch_size,
        )

    async def close(self) -> None:
        if self.batcher:
            await self.batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def encoder(self) -> SentenceEncoder:
        """The loaded model; while it loads (a start, a restart), calls are Unavailable with a
        Retry-After, never an internal error: the service answers health checks meanwhile."""
        if self._encoder is None:
            raise Unavailable(
                "The embeddings model is still loading; retry shortly.", reason="MODEL_LOADING", retry_after_seconds=1
            )
        return self._encoder

    def resolve(self, model: str) -> str:
        names = (self.settings.model_name, *self.settings.model_aliases)
        if model and model not in names:
            raise ModelNotFound(model, list(names))
        return self.settings.model_name

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        model = self.resolve(request.model)
        request.validate(self.limits, self.encoder.dimensions)  # Unavailable until loaded
        assert self.batcher is not None  # made with the encoder
        encoded = await self.batcher.submit(request.texts)
        dimensions = request.dimensions or self.encoder.dimensions
        return EmbedResult(
            model=model,
            embeddings=tuple(
                Encoded(_shape(e.vector, dimensions, request.normalize), e.token_count, e.truncated) for e in encoded
            ),
            dimensions=dimensions,
        )

    async def rerank(self, request: RerankRequest) -> RerankResult:
        model = self.resolve(request.model)
        request.validate(self.limits)
        if self.encoder.has_cross_encoder:
            loop = asyncio.get_running_loop()
            scores = await loop.run_in_executor(
                self._executor, self.encoder.cross_scores, request.query, list(request.documents)
            )
            counts = await loop.run_in_executor(
                self._executor, self.encoder.token_counts, [request.query, *request.documents]
            )
            scorer, tokens = Scorer.CROSS_ENCODER, sum(counts)
        else:
            assert self.batcher is not None
            query, *documents = await self.batcher.submit([request.query, *request.documents])
            query_vector = _shape(query.vector, None, normalize=True)
            scores = [float(np.dot(query_vector, _shape(d.vector, None, normalize=True))) for d in documents]
            scorer, tokens = Scorer.COSINE, query.token_count + sum(d.token_count for d in documents)
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[: request.top_n]
        return RerankResult(
            model=model,
            results=tuple(
                Ranked(i, scores[i], request.documents[i] if request.return_documents else None) for i in order
            ),
            scorer=scorer,
            prompt_tokens=tokens,
        )

    def models(self) -> list[EmbeddingModelInfo]:
        return [
            EmbeddingModelInfo(
                name=self.settings.model_name,
                aliases=tuple(self.settings.model_aliases),
                dimensions=self.encoder.dimensions,
                max_input_tokens=self.encoder.max_input_tokens,
                rerank_scorer=Scorer.CROSS_ENCODER if self.encoder.has_cross_encoder else Scorer.COSINE,
            )
        ]


def _shape(vector: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """OpenAI's `dimensions`: keep the leading components, then (optionally) rescale to unit length."""
    shaped = vector[:dimensions] if dimensions else vector
    if normalize:
        norm = float(np.linalg.norm(shaped))
        shaped = shaped / norm if norm > 0 else shaped
    return shaped
