"""POST /v1/embeddings (OpenAI) and POST /v1/rerank (the Jina/Cohere shape that vLLM and llama-server accept)."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field
from pydantic_core import to_json

from services.common.errors import InvalidArgument, NotFound, quote
from services.embeddings.client import EmbeddingsClient, RerankRequest
from services.gateway.admission import DOORS, admit
from services.gateway.auth import Caller, get_caller
from services.gateway.dependencies import cancel_on_disconnect, get_embeddings, get_home_inference
from services.gateway.protocol.common import INT32_MAX, OpenAIModel, new_id
from services.gateway.protocol.embeddings import EmbeddingsRequestIn, embeddings_body
from services.inference.api import EmbeddingRequest
from services.inference.client import InferenceClient

router = APIRouter()


class DocumentIn(OpenAIModel):
    text: str


class RerankRequestIn(OpenAIModel):
    model: str = Field(min_length=1)
    query: str
    documents: list[str | DocumentIn]
    top_n: int | None = Field(None, ge=1, le=INT32_MAX)
    return_documents: bool = True

    def to_domain(self) -> RerankRequest:
        return RerankRequest(
            model=self.model,
            query=self.query,
            documents=tuple(d if isinstance(d, str) else d.text for d in self.documents),
            top_n=self.top_n,
            return_documents=self.return_documents,
        )


@router.post("/v1/embeddings")
async def create_embeddings(
    body: EmbeddingsRequestIn,
    request: Request,
    embeddings: EmbeddingsClient = Depends(get_embeddings),
    inference: InferenceClient = Depends(get_home_inference),
    caller: Caller = Depends(get_caller),
) -> Response:
    """The embeddings service's models; a name it does not know may be an inference model whose
    managed server serves embeddings (llama-server --embeddings)."""
    admit(caller, DOORS["embeddings"], body, [body.model])
    wanted = body.to_domain()
    try:
        result = await cancel_on_disconnect(request, embeddings.embed(wanted))
        model, tokens, vectors = result.model, result.prompt_tokens, [item.vector for item in result.embeddings]
    except NotFound as error:
        if error.reason != "MODEL_NOT_FOUND":
            raise
        if body.dimensions is not None:
            raise InvalidArgument(f"Model '{quote(body.model)}' takes no 'dimensions'.", param="dimensions") from None
        served = await cancel_on_disconnect(request, inference.embed(EmbeddingRequest(body.model, wanted.texts)))
        model, tokens = served.model, served.prompt_tokens
        vectors = [np.asarray(vector, dtype=np.float32) for vector in served.vectors]
    caller.used(tokens, 0)
    # pydantic-core writes a 384-float vector in 19 us, the json module in 165 (same digits).
    return Response(
        to_json(embeddings_body(model, tokens, vectors, body.encoding_format)), media_type="application/json"
    )


@router.post("/v1/rerank")
@router.post("/rerank")
@router.post("/v2/rerank")
async def rerank(
    body: RerankRequestIn,
    request: Request,
    embeddings: EmbeddingsClient = Depends(get_embeddings),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    admit(caller, DOORS["rerank"], body, [body.model])
    result = await cancel_on_disconnect(request, embeddings.rerank(body.to_domain()))
    caller.used(result.prompt_tokens, 0)
    return {
        "id": new_id("rerank"),
        "model": result.model,
        "scorer": result.scorer.value,  # mesh extension: "cosine" or "cross_encoder"
        "results": [
            {
                "index": ranked.index,
                "relevance_score": ranked.relevance_score,
                **({"document": {"text": ranked.document}} if ranked.document is not None else {}),
            }
            for ranked in result.results
        ],
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
