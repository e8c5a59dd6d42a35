"""Embeddings domain types and their one mapping to and from protobuf."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmmesh.embeddings.v1 import embeddings_service_pb2 as pb
from services.common.errors import InvalidArgument
from services.common.proto_enum import ProtoEnum


class Scorer(ProtoEnum):
    __pb__ = pb.Scorer

    COSINE = "cosine"
    CROSS_ENCODER = "cross_encoder"


@dataclass(frozen=True)
class Limits:
    max_items: int
    max_text_chars: int

    def check_texts(self, texts: tuple[str, ...], param: str) -> None:
        if not texts:
            raise InvalidArgument(f"'{param}' must contain at least one text.", param=param)
        if len(texts) > self.max_items:
            raise InvalidArgument(f"'{param}' has {len(texts)} items; the limit is {self.max_items}.", param=param)
        for index, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"'{param}' item {index} is empty.", param=param)
            if len(text) > self.max_text_chars:
                raise InvalidArgument(
                    f"'{param}' item {index} has {len(text)} characters; the limit is {self.max_text_chars}.",
                    param=param,
                )


@dataclass(frozen=True)
class EmbedRequest:
    model: str
    texts: tuple[str, ...]
    normalize: bool = True
    dimensions: int | None = None

    def validate(self, limits: Limits, model_dimensions: int) -> EmbedRequest:
        limits.check_texts(self.texts, "input")
        if self.dimensions is not None and not 1 <= self.dimensions <= model_dimensions:
            raise InvalidArgument(
                f"'dimensions' must be between 1 and {model_dimensions}; got {self.dimensions}.", param="dimensions"
            )
        return self

    def to_pb(self) -> pb.EmbedRequest:
        return pb.EmbedRequest(
            model=self.model, texts=list(self.texts), normalize=self.normalize, dimensions=self.dimensions
        )

    @classmethod
    def from_pb(cls, request: pb.EmbedRequest) -> EmbedRequest:
        return cls(
            model=request.model,
            texts=tuple(request.texts),
            normalize=request.normalize if request.HasField("normalize") else True,
            dimensions=request.dimensions if request.HasField("dimensions") else None,
        )


@dataclass(frozen=True)
class Encoded:
    """One text through the model."""

    vector: np.ndarray
    token_count: int
    truncated: bool


@dataclass(frozen=True)
class EmbedResult:
    model: str
    embeddings: tuple[Encoded, ...]
    dimensions: int

    @property
    def prompt_tokens(self) -> int:
        return sum(e.token_count for e in self.embeddings)

    def to_pb(self) -> pb.EmbedResponse:
        return pb.EmbedResponse(
            model=self.model,
            embeddings=[
                pb.Embedding(values=e.vector.tolist(), token_count=e.token_count, truncated=e.truncated)
                for e in self.embeddings
            ],
            dimensions=self.dimensions,
            usage=pb.Usage(prompt_tokens=self.prompt_tokens, total_tokens=self.prompt_tokens),
        )

    @classmethod
    def from_pb(cls, response: pb.EmbedResponse) -> EmbedResult:
        return cls(
            model=response.model,
            embeddings=tuple(
                Encoded(np.asarray(e.values, dtype=np.float32), e.token_count, e.truncated) for e in response.embeddings
            ),
            dimensions=response.dimensions,
        )


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: tuple[str, ...]
    top_n: int | None = None
    return_documents: bool = False

    def validate(self, limits: Limits) -> RerankRequest:
        if not self.query.strip():
            raise InvalidArgument("'query' must not be empty.", param="query")
        limits.check_texts((self.query,), "query")
        limits.check_texts(self.documents, "documents")
        if self.top_n is not None and self.top_n < 1:
            raise InvalidArgument(f"'top_n' must be at least 1; got {self.top_n}.", param="top_n")
        return self

    def to_pb(self) -> pb.RerankRequest:
        return pb.RerankRequest(
            model=self.model,
            query=self.query,
            documents=list(self.documents),
            top_n=self.top_n,
            return_documents=self.return_documents,
        )

    @classmethod
    def from_pb(cls, request: pb.RerankRequest) -> RerankRequest:
        return cls(
            model=request.model,
            query=request.query,
            documents=tuple(request.documents),
            top_n=request.top_n if request.HasField("top_n") else None,
            return_documents=request.return_documents,
        )


@dataclass(frozen=True)
class Ranked:
    index: int
    relevance_score: float
    document: str | None = None


@dataclass(frozen=True)
class RerankResult:
    model: str
    results: tuple[Ranked, ...]
    scorer: Scorer
    prompt_tokens: int

    def to_pb(self) -> pb.RerankResponse:
        return pb.RerankResponse(
            model=self.model,
            results=[
                pb.RerankResult(index=r.index, relevance_score=r.relevance_score, document=r.document or "")
                for r in self.results
            ],
            scorer=self.scorer.to_pb(),
            usage=pb.Usage(prompt_tokens=self.prompt_tokens, total_tokens=self.prompt_tokens),
        )

    @classmethod
    def from_pb(cls, response: pb.RerankResponse, with_documents: bool) -> RerankResult:
        return cls(
            model=response.model,
            results=tuple(
                Ranked(r.index, r.relevance_score, r.document if with_documents else None) for r in response.results
            ),
            scorer=Scorer.from_pb(response.scorer),
            prompt_tokens=response.usage.prompt_tokens,
        )


@dataclass(frozen=True)
class EmbeddingModelInfo:
    name: str
    aliases: tuple[str, ...]
    dimensions: int
    max_input_tokens: int
    rerank_scorer: Scorer

    def to_pb(self) -> pb.Model:
        return pb.Model(
            name=self.name,
            aliases=list(self.aliases),
            dimensions=self.dimensions,
            max_input_tokens=self.max_input_tokens,
            rerank_scorer=self.rerank_scorer.to_pb(),
        )

    @classmethod
    def from_pb(cls, model: pb.Model) -> EmbeddingModelInfo:
        return cls(
            name=model.name,
            aliases=tuple(model.aliases),
            dimensions=model.dimensions,
            max_input_tokens=model.max_input_tokens,
            rerank_scorer=Scorer.from_pb(model.rerank_scorer),
        )
