"""Generation metrics with vLLM's names, read from the inference service's metrics port."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.inference.server.server import InferenceServer


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= set(ls))


async def test_a_streamed_chat_moves_the_metrics_by_exactly_its_share(
    inference: InferenceServer, gateway_url: str
) -> None:
    assert inference.metrics_port
    before = await scrape(inference.metrics_port)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "one two three"}]}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert float(response.headers["x-overhead-ms"]) >= 0
            chunks = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    after = await scrape(inference.metrics_port)

    labels = {"model_name": "mock", "backend": "mock"}
    moved = {
        name: value(after, name, **labels) - value(before, name, **labels)
        for name in (
            "llmmesh:time_to_first_token_seconds_count",
            "llmmesh:e2e_request_latency_seconds_count",
            "llmmesh:request_queue_time_seconds_count",
            "llmmesh:inter_token_latency_seconds_count",
            "llmmesh:generation_tokens_total",
            "llmmesh:prompt_tokens_total",
        )
    }
    words = len("[mock-text:mock] one two three".split())  # the mock's tokens are words
    assert moved == {
        "llmmesh:time_to_first_token_seconds_count": 1,
        "llmmesh:e2e_request_latency_seconds_count": 1,
        "llmmesh:request_queue_time_seconds_count": 1,
        "llmmesh:inter_token_latency_seconds_count": words - 1,
        "llmmesh:generation_tokens_total": words,
        "llmmesh:prompt_tokens_total": 3,
    }
    success = "llmmesh:request_success_total"
    assert (
        value(after, success, finished_reason="stop", **labels)
        - value(before, success, finished_reason="stop", **labels)
        == 1
    )
    assert len(chunks) >= words


async def test_an_aborted_stream_counts_as_abort(inference: InferenceServer, gateway_url: str) -> None:
    labels = {"model_name": "mock-slow", "finished_reason": "abort"}
    before = value(await scrape(inference.metrics_port), "llmmesh:request_success_total", **labels)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        body = {"model": "mock-slow", "stream": True, "messages": [{"role": "user", "content": "w " * 50}]}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    break  # hang up mid-stream
    async with asyncio.timeout(10):
        while value(await scrape(inference.metrics_port), "llmmesh:request_success_total", **labels) == before:
            await asyncio.sleep(0.05)
    assert value(await scrape(inference.metrics_port), "llmmesh:request_success_total", **labels) == before + 1


async def test_the_gateway_serves_metrics(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        await http.get("/v1/models")
        text = (await http.get("/metrics")).text
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"llmmesh:gateway_overhead_seconds", "llmmesh:time_to_first_token_seconds"} <= names


async def test_a_repeated_prompt_is_served_from_the_prefix_cache(inference: InferenceServer, gateway_url: str) -> None:
    labels = {"model_name": "gemma-3-270m"}
    before = await scrape(inference.metrics_port)
    body = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": "Name three colors of the rainbow, please."}],
        "max_tokens": 2,
        "temperature": 0,
    }
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        await http.post("/v1/chat/completions", json=body)
        usage = (await http.post("/v1/chat/completions", json=body)).json()["usage"]
    after = await scrape(inference.metrics_port)
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert 0 < cached < usage["prompt_tokens"]  # all but the replayed last token, at most
    hits = value(after, "llmmesh:prefix_cache_hits_total", **labels) - value(
        before, "llmmesh:prefix_cache_hits_total", **labels
    )
    queries = value(after, "llmmesh:prefix_cache_queries_total", **labels) - value(
        before, "llmmesh:prefix_cache_queries_total", **labels
    )
    assert hits >= cached and queries == 2 * usage["prompt_tokens"]
