"""The trainer's typed client: errors as MeshErrors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from llmmesh.trainer.v1 import trainer_service_pb2 as pb
from llmmesh.trainer.v1 import trainer_service_pb2_grpc as pb_grpc
from services.common.grpc_client import ServiceClient, rpc_errors, server_stream
from services.trainer.domain import Hyperparameters, TrainingJob, TrainingState, as_json

# The client speaks its service's domain types: callers import them from here. Adapters and
# the pipeline's state are the .proto's messages (the trainer's domain keeps them so too).
__all__ = ["Hyperparameters", "TrainerClient", "TrainingJob", "TrainingState", "as_json"]


class TrainerClient(ServiceClient):
    """Training jobs, adapters and the build pipeline."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        super().__init__(channel, timeout)
        self._stub = pb_grpc.TrainerServiceStub(channel)

    async def train(self, request: pb.TrainAdapterRequest) -> TrainingJob:
        """The run: started, the stored adapter (cached), or this training id's earlier run."""
        with rpc_errors():
            return TrainingJob.from_pb((await self._stub.TrainAdapter(request, timeout=self._timeout)).job)

    async def watch(self, training_id: str) -> AsyncIterator[TrainingJob]:
        """The run after each change until it ends (no deadline: a run takes what it takes)."""
        call = self._stub.WatchTraining(pb.WatchTrainingRequest(training_id=training_id))
        return await server_stream(call, lambda response: TrainingJob.from_pb(response.job))

    async def cancel(self, training_id: str) -> TrainingJob:
        with rpc_errors():
            request = pb.CancelTrainingRequest(training_id=training_id)
            return TrainingJob.from_pb((await self._stub.CancelTraining(request, timeout=self._timeout)).job)

    async def get(self, training_id: str) -> TrainingJob:
        with rpc_errors():
            request = pb.GetTrainingJobRequest(training_id=training_id)
            return TrainingJob.from_pb((await self._stub.GetTrainingJob(request, timeout=self._timeout)).job)

    async def list_adapters(self, base_model: str, tenant: str) -> list[pb.Adapter]:
        with rpc_errors():
            request = pb.ListAdaptersRequest(base_model=base_model, tenant=tenant)
            return list((await self._stub.ListAdapters(request, timeout=self._timeout)).adapters)

    async def delete_adapter(self, adapter_id: str, tenant: str) -> None:
        with rpc_errors():
            request = pb.DeleteAdapterRequest(adapter_id=adapter_id, tenant=tenant)
            await self._stub.DeleteAdapter(request, timeout=self._timeout)

    async def share_adapter(self, adapter_id: str) -> pb.Adapter:
        with rpc_errors():
            request = pb.ShareAdapterRequest(adapter_id=adapter_id)
            return (await self._stub.ShareAdapter(request, timeout=self._timeout)).adapter

    async def build_pipeline(self, request: pb.BuildPipelineRequest) -> pb.Pipeline:
        with rpc_errors():
            return (await self._stub.BuildPipeline(request, timeout=self._timeout)).pipeline

    async def get_pipeline(self) -> pb.Pipeline:
        with rpc_errors():
            return (await self._stub.GetPipeline(pb.GetPipelineRequest(), timeout=self._timeout)).pipeline

    async def cancel_pipeline(self) -> pb.Pipeline:
        with rpc_errors():
            request = pb.CancelPipelineRequest()
            return (await self._stub.CancelPipeline(request, timeout=self._timeout)).pipeline

    async def pipeline_logs(self) -> AsyncIterator[pb.WatchPipelineLogsResponse]:
        """The build's log lines until it ends. Errors before the first line raise here."""
        return await server_stream(self._stub.WatchPipelineLogs(pb.WatchPipelineLogsRequest()), lambda line: line)

    async def list_artifacts(self) -> list[pb.Artifact]:
        with rpc_errors():
            request = pb.ListArtifactsRequest()
            return list((await self._stub.ListArtifacts(request, timeout=self._timeout)).artifacts)
