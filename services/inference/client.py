"""The inference service's typed client: domain types in and out, errors as MeshErrors.
Several choices of one request (`n`) run as concurrent calls, merged here.

`FleetClient` is the client of a process that routes (the gateway, the scheduler): the home
inference service plus the fleet's other nodes (services/fleet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import grpc

from llmmesh.inference.v1 import inference_service_pb2 as pb
from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.grpc_client import ServiceClient, open_merged, rpc_errors, server_stream
from services.inference.api import (
    ChatRequest,
    Chunk,
    Completed,
    CompletionRequest,
    EmbeddingRequest,
    Embeddings,
    ModelInfo,
    QueueLine,
    Setting,
    StreamEvent,
)

T = TypeVar("T")


class InferenceClient(ServiceClient):
    def __init__(self, channel: grpc.aio.Channel, timeout: float, node: str = "") -> None:
        super().__init__(channel, timeout)
        self._stub = pb_grpc.InferenceServiceStub(channel)
        self.node = node  # the fleet node this service is, named in what it answers

    async def chat(self, requests: Sequence[ChatRequest]) -> list[Completed]:
        async def one(request: ChatRequest) -> Completed:
            return Completed.from_pb(await self._stub.Chat(request.to_pb(), timeout=self._timeout), self.node)

        return await _all_or_none([one(r) for r in requests])

    async def complete(self, requests: Sequence[CompletionRequest]) -> list[Completed]:
        async def one(request: CompletionRequest) -> Completed:
            return Completed.from_pb(await self._stub.Complete(request.to_pb(), timeout=self._timeout), self.node)

        return await _all_or_none([one(r) for r in requests])

    async def stream_chat(self, requests: Sequence[ChatRequest]) -> AsyncIterator[StreamEvent]:
        """Open one stream per choice and merge them. Errors before the first chunk raise here, so
        that the caller can still answer with an HTTP error status."""
        calls = [self._stub.ChatStream(r.to_stream_pb(), timeout=self._timeout) for r in requests]
        return await open_merged([_events(i, call, self.node) for i, call in enumerate(calls)])

    async def stream_complete(self, requests: Sequence[CompletionRequest]) -> AsyncIterator[StreamEvent]:
        calls = [self._stub.CompleteStream(r.to_stream_pb(), timeout=self._timeout) for r in requests]
        return await open_merged([_events(i, call, self.node) for i, call in enumerate(calls)])

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        with rpc_errors():
            return Embeddings.from_pb(await self._stub.Embed(request.to_pb(), timeout=self._timeout))

    async def count_tokens(self, request: ChatRequest) -> int:
        """The tokens `request`'s prompt takes on its model (tools included)."""
        with rpc_errors():
            response = await self._stub.CountTokens(
                pb.CountTokensRequest(request=request.to_pb()), timeout=self._timeout
            )
        return response.input_tokens

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

    async def pull_model(
        self, repo: str, file: str = "", revision: str = "", name: str = ""
    ) -> AsyncIterator[tuple[str, int, int, ModelInfo | None, str]]:
        """A model pull's progress: (file, bytes so far, total bytes, the new model on the last step,
        what it waits for when no bytes move)."""
        call = self._stub.PullModel(pb.PullModelRequest(repo=repo, file=file, revision=revision, name=name))
        return await server_stream(
            call,
            lambda r: (
                r.file,
                r.downloaded_bytes,
                r.total_bytes,
                ModelInfo.from_pb(r.model) if r.HasField("model") else None,
                r.status,
            ),
        )

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


async def _all_or_none(calls: list[Awaitable[T]]) -> list[T]:
    """Run calls concurrently; the first failure cancels the rest and is raised as a domain error."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        with rpc_errors():
            return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def _events(index: int, call: grpc.aio.UnaryStreamCall, node: str) -> AsyncGenerator[StreamEvent]:
    """One call's chunks; closing it cancels the call, which is how a client disconnect reaches the backend."""
    try:
        with rpc_errors():
            async for response in call:
                yield StreamEvent(index, response.model, Chunk.from_pb(response), node)
    finally:
        call.cancel()
