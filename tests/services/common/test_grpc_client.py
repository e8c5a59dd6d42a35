"""Client-side load balancing: one target naming two inference replicas spreads the calls."""

from __future__ import annotations

import httpx

from services.common.registry import ModelRegistry, ModelSpec
from services.gateway.app import build_app
from services.inference.config import InferenceSettings
from services.inference.server.server import InferenceServer
from tests.conftest import gateway_settings, serve_http


async def test_calls_spread_over_every_replica_of_a_target() -> None:
    registry = ModelRegistry.from_specs([ModelSpec(name="mock", backend="mock")], default_model="mock")
    replicas = [InferenceServer(InferenceSettings(port=0, database_url=None), registry=registry) for _ in range(2)]
    for replica in replicas:
        await replica.start()
    target = "ipv4:" + ",".join(f"127.0.0.1:{replica.port}" for replica in replicas)
    server, task, url = await serve_http(build_app(gateway_settings(inference_target=target)))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for _ in range(10):
                response = await http.post(
                    "/v1/chat/completions", json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
                )
                assert response.status_code == 200
        served = [replica.models.backend(registry.find("mock")).stats.tokens_generated for replica in replicas]
        assert all(served), served  # both replicas answered
        assert sum(served) == 10 * 2  # "[mock-text:mock] hi" is two words
    finally:
        server.should_exit = True
        await task
        for replica in replicas:
            await replica.stop(grace=0)
