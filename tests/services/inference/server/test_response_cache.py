"""The response cache: deterministic requests only, replayed without the model, LRU, TTL, on disk."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from llmmesh.inference.v1 import inference_service_pb2 as pb
from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.inference.api import Chunk, FinishReason, ToolCall, Usage
from services.inference.server.response_cache import ResponseCache
from services.inference.server.server import InferenceServer
from tests.conftest import loaded_backend


def chat(text: str, temperature: float, cache: bool | None = True) -> pb.ChatRequest:
    message = pb.ChatMessage(role=pb.ROLE_USER, content=[pb.ContentPart(text=text)])
    return pb.ChatRequest(
        model="mock", messages=[message], sampling=pb.SamplingParams(temperature=temperature), cache=cache
    )


async def test_a_repeated_deterministic_request_is_replayed_without_the_model(
    stub: pb_grpc.InferenceServiceStub, inference: InferenceServer
) -> None:
    backend = await loaded_backend(inference, "mock")
    before = await stub.GetResponseCache(pb.GetResponseCacheRequest())
    first = await stub.Chat(chat("cache me", 0.0))
    generated = backend.stats.tokens_generated  # type: ignore[attr-defined]
    second = await stub.Chat(chat("cache me", 0.0))
    streamed = [c async for c in stub.ChatStream(pb.ChatStreamRequest(request=chat("cache me", 0.0)))]
    assert backend.stats.tokens_generated == generated  # type: ignore[attr-defined]  # no model call
    assert second.message.content[0].text == first.message.content[0].text == "[mock-text:mock] cache me"
    assert "".join(c.delta for c in streamed) == first.message.content[0].text
    after = await stub.GetResponseCache(pb.GetResponseCacheRequest())
    assert (after.hits - before.hits, after.misses - before.misses) == (2, 1)


async def test_sampled_or_unasked_requests_are_not_cached(stub: pb_grpc.InferenceServiceStub) -> None:
    before = await stub.GetResponseCache(pb.GetResponseCacheRequest())
    for request in (chat("sampled", 0.7), chat("sampled", 0.7), chat("not asked", 0.0, cache=None)):
        await stub.Chat(request)
    after = await stub.GetResponseCache(pb.GetResponseCacheRequest())
    assert (after.hits, after.misses) == (before.hits, before.misses)


async def _reply(cache: ResponseCache, key: str) -> list[Chunk]:
    async def chunks():  # type: ignore[no-untyped-def]
        yield Chunk(text="", tool_calls=(ToolCall("call_1", "f", "{}"),))
        yield Chunk(text="done", finish_reason=FinishReason.STOP, usage=Usage(3, 1))

    return [c async for c in cache.record(key, "m", chunks())]


async def test_lru_ttl_and_disk(tmp_path: Path) -> None:
    cache = ResponseCache(max_entries=2, ttl_seconds=60, directory=tmp_path)
    for key in ("a", "b", "c"):
        await _reply(cache, key)
    assert cache.stats().entries == 2
    reopened = ResponseCache(max_entries=2, ttl_seconds=60, directory=tmp_path)  # a restart
    replayed = await reopened.lookup("a", "m")  # evicted from memory, still on disk
    assert replayed is not None and replayed[-1].usage == Usage(3, 1) and replayed[0].tool_calls[0].name == "f"
    stale = ResponseCache(max_entries=2, ttl_seconds=60)
    stale._remember("old", (time.time() - 61, replayed))
    assert await stale.lookup("old", "m") is None


async def test_the_gateway_reports_cache_stats(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        stats = (await http.get("/v1/cache/stats")).json()
    assert {"entries", "max_entries", "ttl_seconds", "hits", "misses", "persistent"} == set(stats)


@pytest.mark.parametrize("temperature", [0.0])
async def test_cached_tool_calls_get_fresh_ids(temperature: float, tmp_path: Path) -> None:
    from services.inference.server.response_cache import replay

    cache = ResponseCache(max_entries=4, ttl_seconds=60)
    original = await _reply(cache, "t")
    replayed = [c async for c in replay(original)]
    assert replayed[0].tool_calls[0].id != original[0].tool_calls[0].id
    await asyncio.sleep(0)
