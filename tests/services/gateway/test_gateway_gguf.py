"""The official openai SDK against the gateway backed by the real Gemma 3 270M GGUF model."""

import httpx
import pytest

from services.inference.server.server import InferenceServer
from tests.conftest import GEMMA, loaded_backend, wait_until_idle


async def test_chat_completion_from_the_real_model(client) -> None:
    response = await client.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    choice = response.choices[0]
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 5
    assert 0 < response.usage.completion_tokens <= 16


async def test_streamed_chat_from_the_real_model(client) -> None:
    stream = await client.chat.completions.create(
        model="live",
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens <= 12
    assert chunks[-1].model == GEMMA


async def test_client_disconnect_stops_generation(gateway_url: str, inference: InferenceServer) -> None:
    backend = await loaded_backend(inference, GEMMA)
    before = backend.stats.tokens_generated
    body = {"model": GEMMA, "prompt": "1, 2, 3, 4,", "max_tokens": 1000, "temperature": 0, "stream": True}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as http:
        async with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    break  # leaving the block closes the connection mid-stream
    await wait_until_idle(backend)
    assert backend.stats.tokens_generated - before < 1000


async def test_non_stream_disconnect_stops_generation(gateway_url: str, inference: InferenceServer) -> None:
    backend = await loaded_backend(inference, GEMMA)
    before = backend.stats.tokens_generated
    body = {"model": GEMMA, "prompt": "1, 2, 3, 4,", "max_tokens": 1000, "temperature": 0}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and goes away
            await http.post("/v1/completions", json=body)
    await wait_until_idle(backend)
    assert backend.stats.tokens_generated - before < 1000
