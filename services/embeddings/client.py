"""The embeddings service's typed client: domain types in and out, errors as MeshErrors."""

from __future__ import annotations

import grpc

from llmmesh.embeddings.v1 import embeddings_service_pb2 as pb
from llmmesh.embeddings.v1 import embeddings_service_pb2_grpc as pb_grpc
from services.common.grpc_client import ServiceClient, rpc_errors
from services.embeddings.domain import (
    EmbeddingModelInfo,
    EmbedRequest,
    EmbedResult,
    RerankRequest,
    RerankResult,
)

# The client speaks its service's domain types: callers import them from here.
__all__ = ["EmbedRequest", "EmbedResult", "EmbeddingModelInfo", "EmbeddingsClient", "RerankRequest", "RerankResult"]


class EmbeddingsClient(ServiceClient):
    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        super().__init__(channel, timeout)
        self._stub = pb_grpc.EmbeddingsServiceStub(channel)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        with rpc_errors():
            return EmbedResult.from_pb(await self._stub.Embed(request.to_pb(), timeout=self._timeout))

    async def rerank(self, request: RerankRequest) -> RerankResult:
        with rpc_errors():
            response = await self._stub.Rerank(request.to_pb(), timeout=self._timeout)
        return RerankResult.from_pb(response, with_documents=request.return_documents)

    async def list_models(self) -> list[EmbeddingModelInfo]:
        with rpc_errors():
            response = await self._stub.ListModels(pb.ListModelsRequest(), timeout=self._timeout)
        return [EmbeddingModelInfo.from_pb(m) for m in response.models]
