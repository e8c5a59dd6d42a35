"""Assembles the trainer: registry, artifact store, training runner, gRPC server."""

from __future__ import annotations

from llmmesh.trainer.v1 import trainer_service_pb2_grpc as pb_grpc
from services.common.artifacts import ArtifactSettings, ArtifactStore
from services.common.grpc_server import GrpcService, start_grpc_server
from services.common.registry import ModelRegistry
from services.trainer.config import TrainerSettings, TrainingDefaults
from services.trainer.engine import Trainer
from services.trainer.pipeline import Pipelines
from services.trainer.servicer import SERVICE_NAME, TrainerServicer


class TrainerServer(GrpcService[TrainerSettings]):
    def __init__(
        self,
        settings: TrainerSettings,
        registry: ModelRegistry | None = None,
        artifacts: ArtifactSettings | None = None,
        defaults: TrainingDefaults | None = None,
    ) -> None:
        self.settings = settings
        artifacts = artifacts or ArtifactSettings()
        self.trainer = Trainer(
            settings,
            registry or ModelRegistry.from_yaml(settings.models_file),
            ArtifactStore(artifacts.dir or settings.data_dir / "adapters", artifacts),
            (defaults or TrainingDefaults()).resolved(),
        )
        self.pipelines = Pipelines(self.trainer)

    async def start(self) -> None:
        self.serve_metrics()
        servicer = TrainerServicer(self.trainer, self.pipelines)
        self._grpc = await start_grpc_server(
            host=self.settings.host,
            port=self.settings.port,
            register=lambda server: pb_grpc.add_TrainerServiceServicer_to_server(servicer, server),
            service_names=[SERVICE_NAME],
            internal_token=self.settings.required_internal_token(),
            max_message_bytes=self.settings.max_message_bytes,
        )

    async def release(self) -> None:
        await self.pipelines.close()
        await self.trainer.close()
