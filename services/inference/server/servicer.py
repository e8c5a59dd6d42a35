"""The gRPC face of the inference engine: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from llmmesh.inference.v1 import inference_service_pb2 as pb
from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.api import ChatRequest, CompletionRequest, EmbeddingRequest
from services.inference.generation import Generation
from services.inference.server.engine import InferenceEngine

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        generation = await self.engine.chat(ChatRequest.from_pb(request))
        return (await generation.collect()).to_pb(pb.ChatResponse, request_id=generation.request_id)

    async def ChatStream(
        self, request: pb.ChatStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatStreamResponse]:
        generation = await self.engine.chat(ChatRequest.from_pb(request.request))
        async for response in _stream(generation, pb.ChatStreamResponse):
            yield response

    async def Complete(self, request: pb.CompleteRequest, context: grpc.aio.ServicerContext) -> pb.CompleteResponse:
        generation = await self.engine.complete(CompletionRequest.from_pb(request))
        return (await generation.collect()).to_pb(pb.CompleteResponse, request_id=generation.request_id)

    async def CompleteStream(
        self, request: pb.CompleteStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CompleteStreamResponse]:
        generation = await self.engine.complete(CompletionRequest.from_pb(request.request))
        async for response in _stream(generation, pb.CompleteStreamResponse):
            yield response

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[info.to_pb() for info in self.engine.list_models()])

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        return (await self.engine.embed(EmbeddingRequest.from_pb(request))).to_pb()

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokensResponse:
        model, tokens = await self.engine.count_tokens(ChatRequest.from_pb(request.request))
        return pb.CountTokensResponse(model=model, input_tokens=tokens)

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=self.engine.get_model(request.name).to_pb())

    async def GetQueue(self, request: pb.GetQueueRequest, context: grpc.aio.ServicerContext) -> pb.GetQueueResponse:
        lines = self.engine.queue()
        return pb.GetQueueResponse(
            models=[line.to_pb() for line in lines],
            total_waiting=self.engine.models.waiting,
            max_waiting=self.engine.models.budget.max_waiting,
        )

    async def GetResponseCache(
        self, request: pb.GetResponseCacheRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetResponseCacheResponse:
        if self.engine.responses is None:
            return pb.GetResponseCacheResponse()
        stats = self.engine.responses.stats()
        return pb.GetResponseCacheResponse(
            entries=stats.entries,
            max_entries=stats.max_entries,
            ttl_seconds=stats.ttl_seconds,
            hits=stats.hits,
            misses=stats.misses,
            persistent=stats.persistent,
        )

    async def LoadModel(self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext) -> pb.LoadModelResponse:
        return pb.LoadModelResponse(model=(await self.engine.load_model(request.name)).to_pb())

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        return pb.UnloadModelResponse(model=(await self.engine.unload_model(request.name)).to_pb())

    async def UnloadModels(
        self, request: pb.UnloadModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelsResponse:
        return pb.UnloadModelsResponse(unloaded=await self.engine.unload_models())

    async def WatchModelLogs(
        self, request: pb.WatchModelLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchModelLogsResponse]:
        async for line in self.engine.model_log(request.name):
            yield pb.WatchModelLogsResponse(line=line)

    async def PullModel(
        self, request: pb.PullModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PullModelResponse]:
        async for step in self.engine.pull_model(request.repo, request.file, request.revision, request.name):
            yield pb.PullModelResponse(
                file=step.file,
                downloaded_bytes=step.downloaded,
                total_bytes=step.total,
                status=step.status,
                model=self.engine.get_model(step.spec.name).to_pb() if step.spec is not None else None,
            )

    async def ReloadModels(
        self, request: pb.ReloadModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadModelsResponse:
        unloaded = await self.engine.reload()
        return pb.ReloadModelsResponse(models=[info.to_pb() for info in self.engine.list_models()], unloaded=unloaded)

    async def ListSettings(
        self, request: pb.ListSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSettingsResponse:
        return pb.ListSettingsResponse(settings=[s.to_pb() for s in await self.engine.list_settings()])

    async def UpdateSetting(
        self, request: pb.UpdateSettingRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateSettingResponse:
        return pb.UpdateSettingResponse(setting=(await self.engine.update_setting(request.key, request.value)).to_pb())


async def _stream(generation: Generation, message_type: type) -> AsyncIterator:
    # aclosing: when the RPC is cancelled, the backend's stream is closed and generation stops.
    async with contextlib.aclosing(generation.chunks) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            yield chunk.to_pb(message_type, request_id=generation.request_id, model=generation.model)
