"""The inference service's typed client: domain types in and out, errors as MeshErrors.
Several choices of one request (`n`) run as concurrent calls, merged here.

`FleetClient` is the client of a process that routes (the gateway, the scheduler): the home
inference service plus the fleet's other nodes (services/inference/fleet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from dataclasses import replace
from typing import TypeVar

import grpc

from llmmesh.inference.v1 import inference_service_pb2 as pb
from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.errors import FailedPrecondition, MeshError, NotFound, quote
from services.common.fleet import FleetSettings, NodeKind, NodeSpec
from services.common.grpc_client import ServiceClient, open_channel, rpc_errors, server_stream
from services.inference.domain import (
    MAX_TOP_LOGPROBS,
    ChatMessage,
    ChatRequest,
    Chunk,
    Completed,
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
    StreamEvent,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)
from services.inference.fleet.nodes import HttpNode, MeshNode, Node, open_merged
from services.inference.fleet.router import Fleet, FleetModel, NodePresence, NodeView

T = TypeVar("T")
R = TypeVar("R", ChatRequest, CompletionRequest)

# The client speaks its service's domain types: callers import them from here.
__all__ = [
    "MAX_TOP_LOGPROBS",
    "ChatMessage",
    "ChatRequest",
    "Chunk",
    "Completed",
    "CompletionRequest",
    "EmbeddingRequest",
    "Embeddings",
    "FinishReason",
    "FleetClient",
    "FleetModel",
    "Image",
    "InferenceClient",
    "ModelInfo",
    "NodePresence",
    "NodeView",
    "QueueLine",
    "ResponseFormat",
    "ResponseFormatKind",
    "Role",
    "SamplingParams",
    "Setting",
    "StreamEvent",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolChoiceMode",
    "Usage",
]


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
    ) -> AsyncIterator[tuple[str, int, int, ModelInfo | None]]:
        """A model pull's progress: (file, bytes so far, total bytes, the new model on the last step)."""
        call = self._stub.PullModel(pb.PullModelRequest(repo=repo, file=file, revision=revision, name=name))
        return await server_stream(
            call,
            lambda r: (
                r.file,
                r.downloaded_bytes,
                r.total_bytes,
                ModelInfo.from_pb(r.model) if r.HasField("model") else None,
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


class FleetClient(InferenceClient):
    """The home inference service and the fleet's other nodes behind one client. Generation and
    the model list go through the fleet's router; administration (load, unload, settings, logs,
    queue) stays with the home service. Without other nodes, calls go straight to the home one."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout: float,
        settings: FleetSettings | None = None,
        internal_token: str | None = None,
        home_address: str = "",
    ) -> None:
        settings = settings or FleetSettings()
        super().__init__(channel, timeout, node=settings.home_node)
        specs = settings.all_nodes()
        home = next((s for s in specs if s.name == settings.home_node), NodeSpec(name=settings.home_node))
        home = home if home.address else home.model_copy(update={"address": home_address})  # shown by /v1/nodes
        nodes = [connect_node(s, internal_token, timeout) for s in specs if s.name != settings.home_node]
        self.fleet = Fleet(MeshNode(home, InferenceClient(channel, timeout, node=home.name)), nodes, settings)

    def start(self) -> None:
        """Start watching the nodes (with other nodes only); call from the running event loop."""
        self.fleet.start()

    async def close(self) -> None:
        await self.fleet.close()

    async def chat(self, requests: Sequence[ChatRequest], node: str | None = None) -> list[Completed]:
        model, pinned, requests = self._route(requests, node)
        return await self.fleet.call(model, pinned, requests, lambda n, rs: n.chat(rs))

    async def complete(self, requests: Sequence[CompletionRequest], node: str | None = None) -> list[Completed]:
        model, pinned, requests = self._route(requests, node)
        return await self.fleet.call(model, pinned, requests, lambda n, rs: n.complete(rs))

    async def stream_chat(self, requests: Sequence[ChatRequest], node: str | None = None) -> AsyncIterator[StreamEvent]:
        model, pinned, requests = self._route(requests, node)
        if self.fleet.single:
            return await super().stream_chat(requests)  # no router in the way of a lone service
        return await self.fleet.stream(model, pinned, requests, lambda n, rs: n.stream_chat(rs))

    async def stream_complete(
        self, requests: Sequence[CompletionRequest], node: str | None = None
    ) -> AsyncIterator[StreamEvent]:
        model, pinned, requests = self._route(requests, node)
        if self.fleet.single:
            return await super().stream_complete(requests)
        return await self.fleet.stream(model, pinned, requests, lambda n, rs: n.stream_complete(rs))

    def _route(self, requests: Sequence[R], node: str | None) -> tuple[str, str | None, Sequence[R]]:
        model, pinned = self.fleet.split(requests[0].model, node)
        if model != requests[0].model:
            requests = [replace(r, model=model) for r in requests]
        return model, pinned, requests

    async def count_tokens(self, request: ChatRequest, node: str | None = None) -> int:
        """Counted by the first LLM Mesh node the request would be routed to (HTTP nodes have no
        chat-template tokenizer to ask)."""
        model, pinned, (request,) = self._route([request], node)
        for state in self.fleet.plan(model, pinned, request):
            if isinstance(state.node, MeshNode):
                return await state.node.client.count_tokens(request)
        raise FailedPrecondition(f"No node that serves '{quote(model)}' can count tokens.", param="model")

    async def catalog(self) -> list[FleetModel]:
        """Every model anywhere in the fleet, with the nodes that serve it."""
        try:
            home_models: list[ModelInfo] | None = await super().list_models()
        except MeshError:
            if self.fleet.single:
                raise
            home_models = None  # the home node is down: its models stay listed, unavailable
        return self.fleet.catalog(home_models)

    async def list_models(self) -> list[ModelInfo]:
        return [model.info for model in await self.catalog()]

    async def get_model(self, name: str) -> ModelInfo:
        try:
            return await super().get_model(name)
        except NotFound:
            model, _ = self.fleet.split(name, None)
            for entry in self.fleet.catalog(None):
                if model in (entry.info.name, *entry.info.aliases):
                    return entry.info
            raise

    def nodes(self) -> list[NodeView]:
        return self.fleet.views()


def connect_node(spec: NodeSpec, internal_token: str | None, timeout: float) -> Node:
    """The client of one node of the fleet (channels and HTTP clients connect lazily)."""
    if spec.kind is NodeKind.MESH:
        channel = open_channel(spec.address, internal_token)
        return MeshNode(spec, InferenceClient(channel, timeout, node=spec.name), close=channel.close)
    return HttpNode(spec, timeout)


def _pull_step(response: pb.PullModelResponse) -> tuple[str, int, int, ModelInfo | None]:
    model = ModelInfo.from_pb(response.model) if response.HasField("model") else None
    return response.file, response.downloaded_bytes, response.total_bytes, model


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
