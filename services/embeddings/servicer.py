"""The gRPC face of the embeddings engine."""

from __future__ import annotations

import grpc

from llmmesh.embeddings.v1 import embeddings_service_pb2 as pb
from llmmesh.embeddings.v1 import embeddings_service_pb2_grpc as pb_grpc
from services.embeddings.domain import EmbedRequest, RerankRequest
from services.embeddings.engine import EmbeddingsEngine

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbeddingsService"].full_name


class EmbeddingsServicer(pb_grpc.EmbeddingsServiceServicer):
    def __init__(self, engine: EmbeddingsEngine) -> None:
        self.engine = engine

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        return (await self.engine.embed(EmbedRequest.from_pb(request))).to_pb()

    async def Rerank(self, request: pb.RerankRequest, context: grpc.aio.ServicerContext) -> pb.RerankResponse:
        return (await self.engine.rerank(RerankRequest.from_pb(request))).to_pb()

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model.to_pb() for model in self.engine.models()])
