"""The inference service's typed client: domain types in and out, errors as MeshErrors.
Several choices of one request (`n`) run as concurrent calls, merged here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from llmmesh.inference.v1 import inference_service_pb2 as pb
from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.grpc_client import ServiceClient, prepend, rpc_errors, server_stream
from services.inference.domain import (
    ChatMessage,
    ChatRequest,
    Chunk,
    CompletionRequest,
    EmbeddingRequest,
    Embeddings,
    FinishReason,
    Image,
    ModelInfo,
    QueueLine,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    Setting,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)

T = TypeVar("T")

# The client speaks its service's domain types: callers import them from here.
__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Chunk",
    "Completed",
    "CompletionRequest",
    "EmbeddingRequest",
    "Embeddings",
    "FinishReason",
    "Image",
    "InferenceClient",
    "ModelInfo",
    "QueueLine",
    "ResponseFormat",
    "ResponseFormatKind",
    "Role",
    "SamplingParams",
    "Setting",
    "StreamEvent",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolChoiceMode",
    "Usage",
]


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


class InferenceClient(ServiceClient):
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

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        with rpc_errors():
            return Embeddings.from_pb(await self._stub.Embed(request.to_pb(), timeout=self._timeout))

    async def list_models(self) -> list[ModelInfo]:
        with rpc_errors():
            response = await self._stub.ListModels(pb.ListModelsRequest(), timeout=self._timeout)
        return [ModelInfo.from_pb(m) for m in response.models]

    async def get_model(self, name: str) -> ModelInfo:
        with rpc_errors():
            response = await self._stub.GetModel(pb.GetModelRequest(name=name), timeout=self._timeout)
        return ModelInfo.from_pb(response.model)

    async def queue(self) -> tuple[list[QueueLine], int, int]:
        """Per-model lines, requests waiting in all, and the most that may wait."""
        with rpc_errors():
            response = await self._stub.GetQueue(pb.GetQueueRequest(), timeout=self._timeout)
        return [QueueLine.from_pb(line) for line in response.models], response.total_waiting, response.max_waiting

    async def response_cache(self) -> dict[str, object]:
        with rpc_errors():
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
        with rpc_errors():
            response = await self._stub.LoadModel(pb.LoadModelRequest(name=name), timeout=self._timeout)
        return ModelInfo.from_pb(response.model)

    async def unload_model(self, name: str) -> ModelInfo:
        with rpc_errors():
            response = await self._stub.UnloadModel(pb.UnloadModelRequest(name=name), timeout=self._timeout)
        return ModelInfo.from_pb(response.model)

    async def unload_models(self) -> list[str]:
        with rpc_errors():
            response = await self._stub.UnloadModels(pb.UnloadModelsRequest(), timeout=self._timeout)
        return list(response.unloaded)

    async def model_logs(self, name: str) -> AsyncIterator[str]:
        """A managed engine's output: the kept lines, then new ones until the reader stops."""
        call = self._stub.WatchModelLogs(pb.WatchModelLogsRequest(name=name))
        return await server_stream(call, lambda response: response.line)

    async def reload_models(self) -> tuple[list[ModelInfo], list[str]]:
        with rpc_errors():
            response = await self._stub.ReloadModels(pb.ReloadModelsRequest(), timeout=self._timeout)
        return [ModelInfo.from_pb(m) for m in response.models], list(response.unloaded)

    async def list_settings(self) -> list[Setting]:
        with rpc_errors():
            response = await self._stub.ListSettings(pb.ListSettingsRequest(), timeout=self._timeout)
        return [Setting.from_pb(s) for s in response.settings]

    async def update_setting(self, key: str, value: str) -> Setting:
        with rpc_errors():
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
        with rpc_errors():
            return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def _open(calls: list[grpc.aio.UnaryStreamCall]) -> AsyncIterator[StreamEvent]:
    stream = _merged(calls)
    with rpc_errors():
        first = await anext(stream)
    return prepend(first, stream)


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
