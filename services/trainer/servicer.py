"""The gRPC face of the trainer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from llmmesh.trainer.v1 import trainer_service_pb2 as pb
from llmmesh.trainer.v1 import trainer_service_pb2_grpc as pb_grpc
from services.trainer.domain import TrainRequest
from services.trainer.engine import Trainer
from services.trainer.pipeline import Pipelines

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TrainerService"].full_name


class TrainerServicer(pb_grpc.TrainerServiceServicer):
    def __init__(self, trainer: Trainer, pipelines: Pipelines) -> None:
        self.trainer = trainer
        self.pipelines = pipelines

    async def TrainAdapter(
        self, request: pb.TrainAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrainAdapterResponse:
        return pb.TrainAdapterResponse(job=(await self.trainer.submit(TrainRequest.from_pb(request))).to_pb())

    async def GetTrainingJob(
        self, request: pb.GetTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTrainingJobResponse:
        return pb.GetTrainingJobResponse(job=self.trainer.get(request.training_id).to_pb())

    async def WatchTraining(
        self, request: pb.WatchTrainingRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchTrainingResponse]:
        async for job in self.trainer.watch(request.training_id):
            yield pb.WatchTrainingResponse(job=job.to_pb())

    async def CancelTraining(
        self, request: pb.CancelTrainingRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelTrainingResponse:
        return pb.CancelTrainingResponse(job=(await self.trainer.cancel(request.training_id)).to_pb())

    async def ListAdapters(
        self, request: pb.ListAdaptersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAdaptersResponse:
        return pb.ListAdaptersResponse(adapters=await self.trainer.list_adapters(request.base_model, request.tenant))

    async def DeleteAdapter(
        self, request: pb.DeleteAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteAdapterResponse:
        await self.trainer.delete_adapter(request.adapter_id, request.tenant)
        return pb.DeleteAdapterResponse()

    async def ShareAdapter(
        self, request: pb.ShareAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShareAdapterResponse:
        return pb.ShareAdapterResponse(adapter=await self.trainer.share_adapter(request.adapter_id))

    async def BuildPipeline(
        self, request: pb.BuildPipelineRequest, context: grpc.aio.ServicerContext
    ) -> pb.BuildPipelineResponse:
        return pb.BuildPipelineResponse(pipeline=(await self.pipelines.build(request)).to_pb())

    async def GetPipeline(
        self, request: pb.GetPipelineRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPipelineResponse:
        return pb.GetPipelineResponse(pipeline=self.pipelines.current().to_pb())

    async def CancelPipeline(
        self, request: pb.CancelPipelineRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelPipelineResponse:
        return pb.CancelPipelineResponse(pipeline=(await self.pipelines.cancel()).to_pb())

    async def WatchPipelineLogs(
        self, request: pb.WatchPipelineLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchPipelineLogsResponse]:
        async for line in self.pipelines.logs():
            yield line.to_pb()

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListArtifactsResponse:
        return pb.ListArtifactsResponse(artifacts=await self.pipelines.artifacts())
