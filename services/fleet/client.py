"""The fleet's client: the home inference service and the fleet's other nodes behind one face.
It composes node clients and chooses among them; the node clients know nothing of it.

Generation, token counts and the model list go through the router (router.py); administration
(load, unload, settings, logs, queue, embeddings) stays with the home service, `home`. Without
other nodes, calls go straight to the home service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import TypeVar

import grpc

from services.common.errors import FailedPrecondition, MeshError, NotFound, quote
from services.common.fleet import FleetSettings, NodeKind, NodeSpec
from services.common.grpc_client import open_channel
from services.fleet.nodes import HttpNode, MeshNode, Node
from services.fleet.router import Fleet, FleetModel, NodePresence, NodeView
from services.inference.api import ChatRequest, Completed, CompletionRequest, ModelInfo, StreamEvent
from services.inference.client import InferenceClient

R = TypeVar("R", ChatRequest, CompletionRequest)

__all__ = ["FleetClient", "FleetModel", "NodePresence", "NodeView"]


class FleetClient:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout: float,
        settings: FleetSettings | None = None,
        internal_token: str | None = None,
        home_address: str = "",
    ) -> None:
        settings = settings or FleetSettings()
        self.home = InferenceClient(channel, timeout, node=settings.home_node)
        specs = settings.all_nodes()
        spec = next((s for s in specs if s.name == settings.home_node), NodeSpec(name=settings.home_node))
        spec = spec if spec.address else spec.model_copy(update={"address": home_address})  # shown by /v1/nodes
        nodes = [connect_node(s, internal_token, timeout) for s in specs if s.name != settings.home_node]
        self.fleet = Fleet(MeshNode(spec, self.home), nodes, settings)

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
            return await self.home.stream_chat(requests)  # no router in the way of a lone service
        return await self.fleet.stream(model, pinned, requests, lambda n, rs: n.stream_chat(rs))

    async def stream_complete(
        self, requests: Sequence[CompletionRequest], node: str | None = None
    ) -> AsyncIterator[StreamEvent]:
        model, pinned, requests = self._route(requests, node)
        if self.fleet.single:
            return await self.home.stream_complete(requests)
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
            home_models: list[ModelInfo] | None = await self.home.list_models()
        except MeshError:
            if self.fleet.single:
                raise
            home_models = None  # the home node is down: its models stay listed, unavailable
        return self.fleet.catalog(home_models)

    async def list_models(self) -> list[ModelInfo]:
        return [model.info for model in await self.catalog()]

    async def get_model(self, name: str) -> ModelInfo:
        try:
            return await self.home.get_model(name)
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
