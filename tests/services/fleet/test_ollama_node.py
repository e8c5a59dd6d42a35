"""An Ollama node over Ollama's native API: a real HTTP server in the test speaks its documented
wire format (fake_providers.ollama_app); no real Ollama runs here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from services.common.errors import InvalidArgument, Unavailable
from services.common.fleet import FleetSettings, NodeKind, NodeSpec
from services.common.grpc_client import open_channel
from services.fleet.client import FleetClient
from services.fleet.router import Circuit
from services.inference.api import ChatMessage, ChatRequest, CompletionRequest, FinishReason, Role, SamplingParams, Tool
from services.inference.server.server import InferenceServer
from tests.conftest import INTERNAL_TOKEN, serve_http
from tests.services.inference.backends.rest.fake_providers import ollama_app


@pytest_asyncio.fixture
async def ollama(inference: InferenceServer) -> AsyncIterator[tuple[FleetClient, list[dict[str, Any]], Any]]:
    """A FleetClient over the test session's inference service and an Ollama node."""
    seen: list[dict[str, Any]] = []
    server, task, url = await serve_http(ollama_app(seen))
    node = NodeSpec(name="desk", kind=NodeKind.OLLAMA, address=url)
    channel = open_channel(f"127.0.0.1:{inference.port}", INTERNAL_TOKEN)
    client = FleetClient(channel, 30, FleetSettings(nodes=[node], cooldown_seconds=60), INTERNAL_TOKEN)
    await client.fleet.refresh()

    async def stop() -> None:
        server.should_exit = True
        await task

    try:
        yield client, seen, stop
    finally:
        await stop()
        await client.close()
        await channel.close()


def ask(model: str, text: str = "hello", **fields: Any) -> list[ChatRequest]:
    return [ChatRequest(model=model, messages=(ChatMessage(Role.USER, text),), **fields)]


async def test_discovery_reads_tags_and_what_is_loaded(ollama: tuple[FleetClient, Any, Any]) -> None:
    client, _, _ = ollama
    catalog = {entry.info.name: entry for entry in await client.catalog()}
    assert [(n.node, n.available, n.loaded) for n in catalog["gemma3:270m"].nodes] == [("desk", True, True)]
    assert [(n.node, n.loaded) for n in catalog["qwen3:0.6b"].nodes] == [("desk", False)]
    assert catalog["gemma3:270m"].info.backend == "ollama"
    assert "mock" in catalog  # the home node's models are listed beside them


async def test_chat_and_completions_speak_ollamas_native_api(ollama: tuple[FleetClient, Any, Any]) -> None:
    client, seen, _ = ollama
    text = [e.chunk async for e in await client.stream_chat(ask("gemma3:270m", sampling=SamplingParams(top_k=5)))]
    assert "".join(c.text for c in text) == "ollama says hello images=0"
    assert text[-1].finish_reason is FinishReason.STOP and text[-1].usage.completion_tokens == 4  # type: ignore[union-attr]
    assert seen[-1]["body"]["options"] == {"top_k": 5} and seen[-1]["body"]["stream"] is True
    [reply] = await client.chat(ask("gemma3:270m", "a b c", sampling=SamplingParams(max_tokens=2)))
    assert (reply.text, reply.finish_reason, reply.node) == ("ollama says", FinishReason.LENGTH, "desk")
    [completion] = await client.complete([CompletionRequest(model="qwen3:0.6b", prompt="once upon")])
    assert completion.text == "ollama continues once upon" and seen[-1]["body"]["raw"] is True
    assert (await client.chat(ask("mock")))[0].node == "local"  # the home node keeps its own models


async def test_what_an_ollama_node_cannot_serve_is_refused_clearly(ollama: tuple[FleetClient, Any, Any]) -> None:
    client, _, _ = ollama
    with pytest.raises(InvalidArgument, match="served only by nodes that cannot take requests with tools"):
        await client.chat(ask("gemma3:270m", tools=(Tool("lookup"),)))
    with pytest.raises(InvalidArgument, match="Node 'desk' \\(ollama\\) cannot serve requests with adapters"):
        await client.chat(ask("mock", adapter="someone-elses", tenant="t"), node="desk")


async def test_a_stopped_ollama_stays_listed_unavailable(ollama: tuple[FleetClient, Any, Any]) -> None:
    client, _, stop = ollama
    await stop()
    await client.fleet.refresh()
    view = {v.name: v for v in client.nodes()}["desk"]
    assert not view.healthy and view.circuit is Circuit.OPEN
    catalog = {entry.info.name: entry for entry in await client.catalog()}
    assert [(n.node, n.available) for n in catalog["gemma3:270m"].nodes] == [("desk", False)]
    with pytest.raises(Unavailable, match="Node 'desk' unreachable"):
        await client.chat(ask("gemma3:270m"))
