"""Assembles the inference service: registry, model manager, engine, gRPC server."""

from __future__ import annotations

import asyncio
import logging

from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.grpc_server import GrpcService, start_grpc_server
from services.inference.config import InferenceSettings
from services.inference.domain import ModelState
from services.inference.engine import InferenceEngine
from services.inference.model_manager import ModelManager
from services.inference.registry import ModelRegistry
from services.inference.servicer import SERVICE_NAME, InferenceServicer

log = logging.getLogger(__name__)


def model_health_name(model: str) -> str:
    """The grpc.health.v1 service name that reports one model's readiness."""
    return f"model/{model}"


class InferenceServer(GrpcService[InferenceSettings]):
    """The running service. Overall health is SERVING once preloading is done; each model
    also has its own health entry (`model/<name>`), SERVING while it is loaded."""

    def __init__(self, settings: InferenceSettings, registry: ModelRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or ModelRegistry.from_yaml(settings.models_file)
        self.models = ModelManager(self.registry, on_state_change=self._publish_model_state)
        self.engine = InferenceEngine(self.registry, self.models)

    async def start(self) -> None:
        """Serve, then preload. Until preloading is done, overall health is NOT_SERVING (a
        readiness probe holds traffic back) while the port already answers (liveness)."""
        preload = {self.registry.resolve(name).name: self.registry.resolve(name) for name in self._preload_names()}
        servicer = InferenceServicer(self.engine)
        self._grpc = await start_grpc_server(
            host=self.settings.host,
            port=self.settings.port,
            register=lambda server: pb_grpc.add_InferenceServiceServicer_to_server(servicer, server),
            service_names=[SERVICE_NAME],
            serving=not preload,
        )
        for spec in self.registry:
            await self._publish_model_state(spec.name, self.models.state(spec.name))
        if preload:
            await asyncio.gather(*(self.models.get(spec) for spec in preload.values()))
            await self._grpc.set_serving(("", SERVICE_NAME), True)

    def _preload_names(self) -> list[str]:
        default = [self.registry.default_model] if self.settings.preload_default_model else []
        return default + self.settings.preload_models

    async def release(self) -> None:
        await self.models.unload_all()

    async def _publish_model_state(self, name: str, state: ModelState) -> None:
        if self._grpc:
            await self._grpc.set_serving([model_health_name(name)], state is ModelState.LOADED)
