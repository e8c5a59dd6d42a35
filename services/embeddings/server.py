"""Assembles the embeddings service: model, micro-batcher, gRPC server."""

from __future__ import annotations

from llmmesh.embeddings.v1 import embeddings_service_pb2_grpc as pb_grpc
from services.common.grpc_server import GrpcService, start_grpc_server
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.engine import EmbeddingsEngine
from services.embeddings.servicer import SERVICE_NAME, EmbeddingsServicer


class EmbeddingsServer(GrpcService[EmbeddingsSettings]):
    """Health is NOT_SERVING until the model is loaded and warmed up."""

    def __init__(self, settings: EmbeddingsSettings) -> None:
        self.settings = settings
        self.engine = EmbeddingsEngine(settings)

    async def start(self) -> None:
        self.serve_metrics()
        servicer = EmbeddingsServicer(self.engine)
        self._grpc = await start_grpc_server(
            host=self.settings.host,
            port=self.settings.port,
            register=lambda server: pb_grpc.add_EmbeddingsServiceServicer_to_server(servicer, server),
            service_names=[SERVICE_NAME],
            internal_token=self.settings.required_internal_token(),
            max_message_bytes=self.settings.max_message_bytes,
            serving=False,
        )
        await self.engine.load()
        await self._grpc.set_serving(("", SERVICE_NAME), True)

    async def release(self) -> None:
        await self.engine.close()
