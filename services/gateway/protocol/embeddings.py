"""/v1/embeddings: the request, its mapping to the embeddings contract, and the response body."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from services.common.errors import InvalidArgument
from services.embeddings.client import EmbedRequest
from services.gateway.protocol.common import INT32_MAX, OpenAIModel


class EmbeddingsRequestIn(OpenAIModel):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=INT32_MAX)
    user: str | None = None

    def to_domain(self) -> EmbedRequest:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not all(isinstance(text, str) for text in texts):
            raise InvalidArgument(
                "Token-id input is not supported: token ids of another tokenizer would embed the wrong text. "
                "Send strings (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False)).",
                param="input",
            )
        return EmbedRequest(model=self.model, texts=tuple(texts), dimensions=self.dimensions)  # type: ignore[arg-type]


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32, as the OpenAI SDK decodes it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def embeddings_body(model: str, tokens: int, vectors: Sequence[np.ndarray], encoding_format: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": _encode(vector, encoding_format)}
            for index, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
