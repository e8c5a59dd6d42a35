"""The sentence-transformers models. Every method blocks: callers run them in the model's executor."""

from __future__ import annotations

import logging

import numpy as np

from services.common.model_files import resolve_model_path
from services.embeddings.domain import Encoded

log = logging.getLogger(__name__)


class SentenceEncoder:
    def __init__(self, model_path: str, device: str, reranker_path: str | None = None) -> None:
        # Heavy imports happen here, on the executor thread, not at module import.
        from sentence_transformers import CrossEncoder, SentenceTransformer

        self._model = SentenceTransformer(str(resolve_model_path(model_path)), device=device, local_files_only=True)
        self._tokenizer = self._model.tokenizer
        self.max_input_tokens = int(self._model.max_seq_length or 512)
        self.dimensions = int(self._model.get_embedding_dimension() or 0)
        self._reranker = (
            CrossEncoder(str(resolve_model_path(reranker_path)), device=device, local_files_only=True)
            if reranker_path
            else None
        )
        self.encode(["warm up"])
        log.info("loaded embedding model %s (%d dimensions)", model_path, self.dimensions)

    @property
    def has_cross_encoder(self) -> bool:
        return self._reranker is not None

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per text before truncation, special tokens included."""
        return [len(ids) for ids in self._tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Raw (unnormalized) vectors: normalization and truncation are per request."""
        vectors = self._model.encode(
            texts, batch_size=max(1, len(texts)), convert_to_numpy=True, normalize_embeddings=False
        )
        counts = self.token_counts(texts)
        limit = self.max_input_tokens
        return [
            Encoded(vector=vector.astype(np.float32), token_count=min(count, limit), truncated=count > limit)
            for vector, count in zip(vectors, counts, strict=True)
        ]

    def cross_scores(self, query: str, documents: list[str]) -> list[float]:
        assert self._reranker is not None
        scores = self._reranker.predict([(query, document) for document in documents], convert_to_numpy=True)
        return [float(score) for score in scores]
