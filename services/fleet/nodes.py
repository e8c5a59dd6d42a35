"""The nodes a fleet routes to, behind one interface: another LLM Mesh inference service (through
its typed client), an OpenAI-compatible server, and Ollama's native API.

HTTP nodes reuse the REST backend's wire formats (services/upstream/dialects.py): one place knows
how OpenAI and Ollama bodies and streams look.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from services.common.config import secret_from_environment
from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    MeshError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.common.fleet import NodeKind, NodeSpec
from services.common.grpc_client import open_merged
from services.inference.api import (
    ChatRequest,
    Chunk,
    Collector,
    Completed,
    CompletionRequest,
    ModelInfo,
    ModelState,
    Role,
    StreamEvent,
)
from services.inference.client import InferenceClient
from services.upstream.config import AuthType, Provider, RequestFormat, RestConfig
from services.upstream.dialects import (
    StreamState,
    UpstreamRequest,
    UpstreamStreamError,
    build_call,
    parse_stream_event,
)
from services.upstream.events import read_events

Request = ChatRequest | CompletionRequest


@dataclass(frozen=True)
class NodeLoad:
    """What a node reports about its own work (other clients' requests included)."""

    running: int = 0
    waiting: int = 0
    slots: int | None = None  # requests it runs at once, where it says (llama-server's /slots)


@dataclass(frozen=True)
class NodeModel:
    """A model as one node serves it."""

    info: ModelInfo

    @property
    def names(self) -> tuple[str, ...]:
        return (self.info.name, *self.info.aliases)


class Node(ABC):
    """One node: generation (streams come back opened, the first event in hand), and what the
    router's background watch reads: health, load and models."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def refuses(self, request: Request) -> str | None:
        """What in `request` this kind of node cannot serve, if anything."""
        return None

    @abstractmethod
    async def chat(self, requests: Sequence[ChatRequest]) -> list[Completed]: ...

    @abstractmethod
    async def complete(self, requests: Sequence[CompletionRequest]) -> list[Completed]: ...

    @abstractmethod
    async def stream_chat(self, requests: Sequence[ChatRequest]) -> AsyncIterator[StreamEvent]: ...

    @abstractmethod
    async def stream_complete(self, requests: Sequence[CompletionRequest]) -> AsyncIterator[StreamEvent]: ...

    @abstractmethod
    async def check_health(self, timeout: float) -> None:
        """Returns when the node takes requests; raises Unavailable otherwise."""

    @abstractmethod
    async def load(self, timeout: float) -> NodeLoad: ...

    @abstractmethod
    async def models(self, timeout: float) -> list[NodeModel]: ...

    async def close(self) -> None:
        return None


class MeshNode(Node):
    """Another LLM Mesh inference service: the request goes as it is (tools, adapters, caching
    and all), and its engine does the rest."""

    def __init__(self, spec: NodeSpec, client: InferenceClient, close: Any = None) -> None:
        super().__init__(spec)
        self.client = client
        self._close = close

    async def chat(self, requests: Sequence[ChatRequest]) -> list[Completed]:
        return await self.client.chat(requests)

    async def complete(self, requests: Sequence[CompletionRequest]) -> list[Completed]:
        return await self.client.complete(requests)

    async def stream_chat(self, requests: Sequence[ChatRequest]) -> AsyncIterator[StreamEvent]:
        return await self.client.stream_chat(requests)

    async def stream_complete(self, requests: Sequence[CompletionRequest]) -> AsyncIterator[StreamEvent]:
        return await self.client.stream_complete(requests)

    async def check_health(self, timeout: float) -> None:
        status = await self.client.health(timeout)
        if status != "SERVING":
            raise Unavailable(f"Node '{self.name}' is {status}.", reason="NODE_UNAVAILABLE")

    async def load(self, timeout: float) -> NodeLoad:
        lines, waiting, _ = await asyncio.wait_for(self.client.queue(), timeout)
        return NodeLoad(running=sum(line.running for line in lines), waiting=waiting)

    async def models(self, timeout: float) -> list[NodeModel]:
        return [NodeModel(info) for info in await asyncio.wait_for(self.client.list_models(), timeout)]

    async def close(self) -> None:
        if self._close is not None:
            await self._close()


class HttpNode(Node):
    """An OpenAI-compatible server (kind openai) or Ollama (kind ollama). Requests with tools,
    adapters, logprobs or tool turns need an LLM Mesh engine and are routed to mesh nodes instead."""

    def __init__(self, spec: NodeSpec, timeout: float) -> None:
        super().__init__(spec)
        self._provider = Provider.OLLAMA if spec.kind is NodeKind.OLLAMA else Provider.OPENAI
        token = secret_from_environment(spec.auth_token_env) if spec.auth_token_env else None
        self._config = RestConfig(
            url=spec.address.rstrip("/"),
            remote_model="",
            provider=self._provider,
            request_format=RequestFormat.OLLAMA if spec.kind is NodeKind.OLLAMA else RequestFormat.OPENAI,
            auth_type=AuthType.BEARER if token else AuthType.NONE,
            auth_token=token,
            auth_header="Authorization",
            timeout=timeout,
        )
        self._client = httpx.AsyncClient(
            base_url=self._config.url,
            headers=self._config.headers(),
            timeout=httpx.Timeout(timeout, connect=5.0),
            follow_redirects=False,
        )

    def refuses(self, request: Request) -> str | None:
        if request.adapter:
            return "adapters"
        if request.logprobs is not None:
            return "logprobs"
        if isinstance(request, ChatRequest) and (
            request.uses_tools or any(m.tool_calls or m.role is Role.TOOL for m in request.messages)
        ):
            return "tools"
        return None

    async def chat(self, requests: Sequence[ChatRequest]) -> list[Completed]:
        return await _collect(await self.stream_chat(requests), len(requests))

    async def complete(self, requests: Sequence[CompletionRequest]) -> list[Completed]:
        return await _collect(await self.stream_complete(requests), len(requests))

    async def stream_chat(self, requests: Sequence[ChatRequest]) -> AsyncIterator[StreamEvent]:
        return await open_merged(
            [
                self._stream(i, r.model, UpstreamRequest(r.sampling, r.messages, response_format=r.response_format))
                for i, r in enumerate(requests)
            ]
        )

    async def stream_complete(self, requests: Sequence[CompletionRequest]) -> AsyncIterator[StreamEvent]:
        return await open_merged(
            [
                self._stream(
                    i, r.model, UpstreamRequest(r.sampling, prompt=r.prompt, response_format=r.response_format)
                )
                for i, r in enumerate(requests)
            ]
        )

    async def _stream(self, index: int, model: str, upstream: UpstreamRequest) -> AsyncGenerator[StreamEvent]:
        config = self._config.model_copy(update={"remote_model": model})
        call = build_call(config, upstream, stream=True)
        path = call.path.removeprefix("/v1") if self._config.url.endswith("/v1") else call.path
        try:
            response = await self._client.send(self._client.build_request("POST", path, json=call.body), stream=True)
        except httpx.TimeoutException as error:
            raise DeadlineExceeded(f"Node '{self.name}' did not answer in time.", reason="NODE_TIMEOUT") from error
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        try:
            if response.status_code >= 300:
                raise self._refusal(response.status_code, (await response.aread()).decode("utf-8", "replace"))
            state = StreamState()
            async for data in read_events(response, call.stream or "sse"):
                text = parse_stream_event(self._provider, data, state)
                if text:
                    yield StreamEvent(index, model, Chunk(text=text), self.name)
                if state.done:
                    break
            yield StreamEvent(index, model, state.last_chunk(), self.name)
        except UpstreamStreamError as error:
            raise Unavailable(f"Node '{self.name}' failed: {error}"[:500], reason="NODE_ERROR") from error
        except (ValueError, KeyError, TypeError) as error:
            raise Unavailable(f"Node '{self.name}' sent an unreadable stream: {error}", reason="NODE_ERROR") from error
        except httpx.TimeoutException as error:
            raise DeadlineExceeded(f"Node '{self.name}' stopped answering.", reason="NODE_TIMEOUT") from error
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        finally:
            await response.aclose()  # also how a cancelled request stops the node's generation

    def _unreachable(self, error: Exception) -> Unavailable:
        return Unavailable(f"Node '{self.name}' unreachable: {type(error).__name__}", reason="NODE_UNREACHABLE")

    def _refusal(self, status: int, body: str) -> MeshError:
        message = f"Node '{self.name}' answered {status}: {body.strip()[:300]}"
        if status == 404:
            return NotFound(message, reason="NODE_MODEL_NOT_FOUND", param="model")
        if status == 429:
            return ResourceExhausted(message, reason="NODE_BUSY")
        if 400 <= status < 500:
            return InvalidArgument(message, reason="NODE_REJECTED")
        return Unavailable(message, reason="NODE_ERROR")

    async def _get(self, path: str, timeout: float) -> Any:
        try:
            response = await self._client.get(path, timeout=timeout)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        if response.status_code != 200:
            raise self._refusal(response.status_code, response.text)
        try:
            return response.json()
        except ValueError as error:
            raise Unavailable(f"Node '{self.name}' sent unreadable JSON on {path}.", reason="NODE_ERROR") from error

    async def check_health(self, timeout: float) -> None:
        if self._provider is Provider.OLLAMA:
            await self._get("/api/version", timeout)
            return
        try:
            await self._get("/health", timeout)  # llama-server and vLLM: 503 while loading
        except NotFound:
            await self._get("/v1/models", timeout)  # servers without /health

    async def load(self, timeout: float) -> NodeLoad:
        if self._provider is Provider.OLLAMA:
            return NodeLoad()  # Ollama reports no queue
        try:
            slots = await self._get("/slots", timeout)  # llama-server
        except (NotFound, InvalidArgument, Unavailable):
            return NodeLoad()  # not llama-server, or its slots endpoint is off
        if not isinstance(slots, list):
            return NodeLoad()
        running = sum(1 for slot in slots if isinstance(slot, dict) and slot.get("is_processing"))
        return NodeLoad(running=running, slots=len(slots) or None)

    async def models(self, timeout: float) -> list[NodeModel]:
        if self._provider is Provider.OLLAMA:
            tags = await self._get("/api/tags", timeout)
            running = await self._get("/api/ps", timeout)
            loaded = {m.get("name") for m in running.get("models") or [] if isinstance(m, dict)}
            names = [m.get("name") for m in tags.get("models") or [] if isinstance(m, dict)]
        else:
            listing = await self._get("/v1/models", timeout)
            names = [m.get("id") for m in listing.get("data") or [] if isinstance(m, dict)]
            loaded = set(names)  # an OpenAI server lists what it serves now
        return [
            NodeModel(
                ModelInfo(
                    name=name,
                    backend=self.spec.kind.value,
                    state=ModelState.LOADED if name in loaded else ModelState.UNLOADED,
                    aliases=(),
                    context_length=0,
                    is_default=False,
                )
            )
            for name in names
            if isinstance(name, str) and name
        ]

    async def close(self) -> None:
        await self._client.aclose()


async def _collect(events: AsyncIterator[StreamEvent], choices: int) -> list[Completed]:
    collectors: dict[int, Collector] = {}
    finished: dict[int, Completed] = {}
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            collector = collectors.setdefault(event.index, Collector(event.model, event.node))
            if completed := collector.add(event.chunk):
                finished[event.index] = completed
    if len(finished) != choices:
        raise Unavailable("A node's stream ended before every choice finished.", reason="NODE_ERROR")
    return [finished[i] for i in range(choices)]
