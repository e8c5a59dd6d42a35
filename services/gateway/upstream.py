"""gRPC clients for the services behind the gateway, speaking domain types.

Every gRPC error is turned back into the `MeshError` the service raised, here
and nowhere else, so routers only ever see domain errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmmesh.embeddings.v1 import embeddings_service_pb2 as embeddings_pb
from llmmesh.embeddings.v1 import embeddings_service_pb2_grpc as embeddings_pb_grpc
from llmmesh.inference.v1 import inference_service_pb2 as pb
from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from llmmesh.scheduler.v1 import scheduler_service_pb2 as scheduler_pb
from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as scheduler_pb_grpc
from llmmesh.trainer.v1 import trainer_service_pb2 as trainer_pb
from llmmesh.trainer.v1 import trainer_service_pb2_grpc as trainer_pb_grpc
from services.common.errors import from_rpc_error
from services.embeddings.domain import EmbeddingModelInfo, EmbedRequest, EmbedResult, RerankRequest, RerankResult
from services.gateway.request_context import upstream_call
from services.inference.domain import (
    ChatRequest,
    Chunk,
    CompletionRequest,
    FinishReason,
    ModelInfo,
    QueueLine,
    Setting,
    ToolCall,
    Usage,
)

T = TypeVar("T")


@contextlib.contextmanager
def rpc_errors_as_domain_errors() -> Iterator[None]:
    """Also times the call, for the gateway's overhead measurement."""
    try:
        with upstream_call():
            yield
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from None


@dataclass(frozen=True)
class Completed:
    """One finished choice of a unary call."""

    model: str
    text: str
    finish_reason: FinishReason
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class StreamEvent:
    """One chunk of one choice of a streamed call."""

    index: int
    model: str
    chunk: Chunk


class _Client:
    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._health = health_pb2_grpc.HealthStub(channel)
        self._timeout = timeout

    async def health(self, timeout: float) -> str:
        """The service's overall grpc.health.v1 status name, or UNREACHABLE."""
        try:
            response = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


class EmbeddingsClient(_Client):
    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        super().__init__(channel, timeout)
        self._stub = embeddings_pb_grpc.EmbeddingsServiceStub(channel)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        with rpc_errors_as_domain_errors():
            return EmbedResult.from_pb(await self._stub.Embed(request.to_pb(), timeout=self._timeout))

    async def rerank(self, request: RerankRequest) -> RerankResult:
        with rpc_errors_as_domain_errors():
            response = await self._stub.Rerank(request.to_pb(), timeout=self._timeout)
        return RerankResult.from_pb(response, with_documents=request.return_documents)

    async def list_models(self) -> list[EmbeddingModelInfo]:
        with rpc_errors_as_domain_errors():
            response = await self._stub.ListModels(embeddings_pb.ListModelsRequest(), timeout=self._timeout)
        return [EmbeddingModelInfo.from_pb(m) for m in response.models]


class InferenceClient(_Client):
    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        super().__init__(channel, timeout)
        self._stub = pb_grpc.InferenceServiceStub(channel)

    async def chat(self, requests: Sequence[ChatRequest]) -> list[Completed]:
        async def one(request: ChatRequest) -> Completed:
            response = await self._stub.Chat(request.to_pb(), timeout=self._timeout)
            text = "".join(part.text for part in response.message.content)
            calls = tuple(ToolCall.from_pb(call) for call in response.message.tool_calls)
            return _completed(response, text, calls)

        return await _all_or_none([one(r) for r in requests])

    async def complete(self, requests: Sequence[CompletionRequest]) -> list[Completed]:
        async def one(request: CompletionRequest) -> Completed:
            return _completed(await self._stub.Complete(request.to_pb(), timeout=self._timeout), None)

        return await _all_or_none([one(r) for r in requests])

    async def stream_chat(self, requests: Sequence[ChatRequest]) -> AsyncIterator[StreamEvent]:
        """Open one stream per choice and merge them. Errors before the first chunk raise here, so
        that the caller can still answer with an HTTP error status."""
        return await _open([self._stub.ChatStream(r.to_stream_pb(), timeout=self._timeout) for r in requests])

    async def stream_complete(self, requests: Sequence[CompletionRequest]) -> AsyncIterator[StreamEvent]:
        return await _open([self._stub.CompleteStream(r.to_stream_pb(), timeout=self._timeout) for r in requests])

    async def list_models(self) -> list[ModelInfo]:
        with rpc_errors_as_domain_errors():
            response = await self._stub.ListModels(pb.ListModelsRequest(), timeout=self._timeout)
        return [ModelInfo.from_pb(m) for m in response.models]

    async def get_model(self, name: str) -> ModelInfo:
        with rpc_errors_as_domain_errors():
            response = await self._stub.GetModel(pb.GetModelRequest(name=name), timeout=self._timeout)
        return ModelInfo.from_pb(response.model)

    async def queue(self) -> tuple[list[QueueLine], int, int]:
        """Per-model lines, requests waiting in all, and the most that may wait."""
        with rpc_errors_as_domain_errors():
            response = await self._stub.GetQueue(pb.GetQueueRequest(), timeout=self._timeout)
        return [QueueLine.from_pb(line) for line in response.models], response.total_waiting, response.max_waiting

    async def response_cache(self) -> dict[str, object]:
        with rpc_errors_as_domain_errors():
            response = await self._stub.GetResponseCache(pb.GetResponseCacheRequest(), timeout=self._timeout)
        return {
            "entries": response.entries,
            "max_entries": response.max_entries,
            "ttl_seconds": response.ttl_seconds,
            "hits": response.hits,
            "misses": response.misses,
            "persistent": response.persistent,
        }

    async def load_model(self, name: str) -> ModelInfo:
        with rpc_errors_as_domain_errors():
            response = await self._stub.LoadModel(pb.LoadModelRequest(name=name), timeout=self._timeout)
        return ModelInfo.from_pb(response.model)

    async def unload_model(self, name: str) -> ModelInfo:
        with rpc_errors_as_domain_errors():
            response = await self._stub.UnloadModel(pb.UnloadModelRequest(name=name), timeout=self._timeout)
        return ModelInfo.from_pb(response.model)

    async def unload_models(self) -> list[str]:
        with rpc_errors_as_domain_errors():
            response = await self._stub.UnloadModels(pb.UnloadModelsRequest(), timeout=self._timeout)
        return list(response.unloaded)

    async def reload_models(self) -> tuple[list[ModelInfo], list[str]]:
        with rpc_errors_as_domain_errors():
            response = await self._stub.ReloadModels(pb.ReloadModelsRequest(), timeout=self._timeout)
        return [ModelInfo.from_pb(m) for m in response.models], list(response.unloaded)

    async def list_settings(self) -> list[Setting]:
        with rpc_errors_as_domain_errors():
            response = await self._stub.ListSettings(pb.ListSettingsRequest(), timeout=self._timeout)
        return [Setting.from_pb(s) for s in response.settings]

    async def update_setting(self, key: str, value: str) -> Setting:
        with rpc_errors_as_domain_errors():
            request = pb.UpdateSettingRequest(key=key, value=value)
            response = await self._stub.UpdateSetting(request, timeout=self._timeout)
        return Setting.from_pb(response.setting)


def _completed(response: Any, text: str | None, tool_calls: tuple[ToolCall, ...] = ()) -> Completed:
    return Completed(
        model=response.model,
        text=response.text if text is None else text,
        finish_reason=FinishReason.from_pb(response.finish_reason) or FinishReason.STOP,
        usage=Usage.from_pb(response.usage),
        tool_calls=tool_calls,
    )


async def _all_or_none(calls: list[Awaitable[T]]) -> list[T]:
    """Run calls concurrently; the first failure cancels the rest and is raised as a domain error."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        with rpc_errors_as_domain_errors():
            return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def _open(calls: list[grpc.aio.UnaryStreamCall]) -> AsyncIterator[StreamEvent]:
    stream = _merged(calls)
    with rpc_errors_as_domain_errors():
        first = await anext(stream)
    return _prepend(first, stream)


async def _prepend(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    async with contextlib.aclosing(rest):  # type: ignore[type-var]
        yield first
        with rpc_errors_as_domain_errors():
            async for event in rest:
                yield event


async def _merged(calls: list[grpc.aio.UnaryStreamCall]) -> AsyncIterator[StreamEvent]:
    """Interleave the streams' chunks as they arrive. Leaving early cancels every call,
    which is how a client disconnect reaches the backend."""
    try:
        if len(calls) == 1:
            async for response in calls[0]:
                yield StreamEvent(0, response.model, Chunk.from_pb(response))
            return
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        done = object()

        async def pump(index: int, call: grpc.aio.UnaryStreamCall) -> None:
            try:
                async for response in call:
                    await queue.put((index, response))
                await queue.put((index, done))
            except grpc.aio.AioRpcError as error:
                await queue.put((index, error))

        pumps = [asyncio.create_task(pump(i, call)) for i, call in enumerate(calls)]
        try:
            remaining = len(calls)
            while remaining:
                index, item = await queue.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield StreamEvent(index, item.model, Chunk.from_pb(item))
        finally:
            for task in pumps:
                task.cancel()
    finally:
        for call in calls:
            call.cancel()


class SchedulerClient(_Client):
    """Jobs, always on behalf of one owner: another owner's job is NOT_FOUND."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        super().__init__(channel, timeout)
        self._stub = scheduler_pb_grpc.SchedulerServiceStub(channel)

    async def submit(self, request: scheduler_pb.SubmitJobRequest) -> scheduler_pb.SubmitJobResponse:
        with rpc_errors_as_domain_errors():
            return await self._stub.SubmitJob(request, timeout=self._timeout)

    async def get(self, job_id: str, owner: str) -> scheduler_pb.Job:
        with rpc_errors_as_domain_errors():
            response = await self._stub.GetJob(
                scheduler_pb.GetJobRequest(job_id=job_id, owner=owner), timeout=self._timeout
            )
        return response.job

    async def list(self, request: scheduler_pb.ListJobsRequest) -> scheduler_pb.ListJobsResponse:
        with rpc_errors_as_domain_errors():
            return await self._stub.ListJobs(request, timeout=self._timeout)

    async def cancel(self, job_id: str, owner: str) -> scheduler_pb.Job:
        with rpc_errors_as_domain_errors():
            response = await self._stub.CancelJob(
                scheduler_pb.CancelJobRequest(job_id=job_id, owner=owner), timeout=self._timeout
            )
        return response.job

    async def watch(self, job_id: str, owner: str) -> AsyncIterator[scheduler_pb.Job]:
        """The job's updates until it ends. Errors before the first update raise here."""
        call = self._stub.WatchJob(scheduler_pb.WatchJobRequest(job_id=job_id, owner=owner))
        return await _updates(call, lambda response: response.job)


class TrainerClient(_Client):
    """Training jobs, adapters and the build pipeline."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        super().__init__(channel, timeout)
        self._stub = trainer_pb_grpc.TrainerServiceStub(channel)

    async def get(self, training_id: str) -> trainer_pb.TrainingJob:
        with rpc_errors_as_domain_errors():
            request = trainer_pb.GetTrainingJobRequest(training_id=training_id)
            return (await self._stub.GetTrainingJob(request, timeout=self._timeout)).job

    async def list_adapters(self, base_model: str, tenant: str) -> list[trainer_pb.Adapter]:
        with rpc_errors_as_domain_errors():
            request = trainer_pb.ListAdaptersRequest(base_model=base_model, tenant=tenant)
            return list((await self._stub.ListAdapters(request, timeout=self._timeout)).adapters)

    async def delete_adapter(self, adapter_id: str, tenant: str) -> None:
        with rpc_errors_as_domain_errors():
            request = trainer_pb.DeleteAdapterRequest(adapter_id=adapter_id, tenant=tenant)
            await self._stub.DeleteAdapter(request, timeout=self._timeout)

    async def share_adapter(self, adapter_id: str) -> trainer_pb.Adapter:
        with rpc_errors_as_domain_errors():
            request = trainer_pb.ShareAdapterRequest(adapter_id=adapter_id)
            return (await self._stub.ShareAdapter(request, timeout=self._timeout)).adapter

    async def build_pipeline(self, request: trainer_pb.BuildPipelineRequest) -> trainer_pb.Pipeline:
        with rpc_errors_as_domain_errors():
            return (await self._stub.BuildPipeline(request, timeout=self._timeout)).pipeline

    async def get_pipeline(self) -> trainer_pb.Pipeline:
        with rpc_errors_as_domain_errors():
            return (await self._stub.GetPipeline(trainer_pb.GetPipelineRequest(), timeout=self._timeout)).pipeline

    async def cancel_pipeline(self) -> trainer_pb.Pipeline:
        with rpc_errors_as_domain_errors():
            request = trainer_pb.CancelPipelineRequest()
            return (await self._stub.CancelPipeline(request, timeout=self._timeout)).pipeline

    async def pipeline_logs(self) -> AsyncIterator[trainer_pb.WatchPipelineLogsResponse]:
        """The build's log lines until it ends. Errors before the first line raise here."""
        return await _updates(self._stub.WatchPipelineLogs(trainer_pb.WatchPipelineLogsRequest()), lambda line: line)

    async def list_artifacts(self) -> list[trainer_pb.Artifact]:
        with rpc_errors_as_domain_errors():
            request = trainer_pb.ListArtifactsRequest()
            return list((await self._stub.ListArtifacts(request, timeout=self._timeout)).artifacts)


async def _updates(call: grpc.aio.UnaryStreamCall, pick: Callable[[Any], T]) -> AsyncIterator[T]:
    """A server stream's items (picked from each response); the call is cancelled when the reader
    stops. Errors before the first item raise here, so a router can still answer with a status."""

    async def items() -> AsyncIterator[T]:
        try:
            async for response in call:
                yield pick(response)
        finally:
            call.cancel()

    stream = items()
    with rpc_errors_as_domain_errors():
        first = await anext(stream)
    return _prepend(first, stream)
