"""Model management through the real gateway and gRPC services: settings, reload, hot swap,
single-model queueing, queue visibility and overflow."""

import asyncio

import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.registry import ModelRegistry, ModelSpec
from services.gateway.app import build_app
from services.inference.config import InferenceSettings
from services.inference.server.server import InferenceServer, model_health_name
from tests.conftest import GEMMA, gateway_settings, serve_http


def chat(model: str, text: str = "hi", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def test_settings_list_and_validation(admin) -> None:
    keys = {s["key"] for s in (await admin.get("/settings/")).json()["settings"]}
    assert {"model.live.name", "model.live.backend", "model.background.name", "model.heavy.name"} <= keys
    unknown = await admin.put("/settings/model.nope.name", json={"value": "x"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "key"
    bad = await admin.put("/settings/model.live.backend", json={"value": "tensorflow"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "value"
    assert (await admin.put("/settings/model.live.name", json={})).status_code == 400


async def in_force(admin, key: str) -> tuple[str, str]:
    """A setting's (stored value, value in force)."""
    setting = next(s for s in (await admin.get("/settings/")).json()["settings"] if s["key"] == key)
    return setting["value"], setting["effective_value"]


async def test_reload_picks_up_a_changed_setting(http, admin) -> None:
    assert (await http.post("/v1/chat/completions", json=chat("live", max_tokens=1))).json()["model"] == GEMMA
    # Nothing stored, yet the live slot serves the registry's default: the list says so.
    assert await in_force(admin, "model.live.name") == ("", GEMMA)
    assert await in_force(admin, "model.live.backend") == ("", "gguf")
    try:
        stored = await admin.put("/settings/model.live.name", json={"value": "mock"})
        assert stored.json()["value"] == "mock" and stored.json()["updated_at"]
        # Stored, not yet applied: it takes effect on the next reload.
        assert (await http.post("/v1/chat/completions", json=chat("live", max_tokens=1))).json()["model"] == GEMMA
        assert await in_force(admin, "model.live.name") == ("mock", GEMMA)
        assert (await admin.post("/admin/models/reload")).status_code == 200
        assert await in_force(admin, "model.live.name") == ("mock", "mock")
        assert await in_force(admin, "model.background.name") == ("", "mock")
        reply = (await http.post("/v1/chat/completions", json=chat("live", "after reload"))).json()
        assert reply["choices"][0]["message"]["content"] == "[mock-text:mock] after reload"
        listed = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
        assert listed["live"]["resolves_to"] == "mock"
        assert listed["background"]["resolves_to"] == "mock"  # background falls back to live
    finally:
        await admin.put("/settings/model.live.name", json={"value": ""})
        await admin.post("/admin/models/reload")
    assert (await http.post("/v1/chat/completions", json=chat("live", max_tokens=1))).json()["model"] == GEMMA


async def test_settings_persist_across_a_restart(fresh_database_url: str) -> None:
    registry = ModelRegistry.from_specs([ModelSpec(name="a", backend="mock"), ModelSpec(name="b", backend="mock")])
    settings = InferenceSettings(port=0, database_url=fresh_database_url, preload_default_model=False)
    first = InferenceServer(settings, registry=registry)
    await first.start()
    await first.engine.update_setting("model.live.name", "b")
    await first.stop(grace=0)

    second = InferenceServer(settings, registry=registry)
    await second.start()
    try:
        assert second.engine.get_model("live").name == "b"
        stored = {s.key: s.value for s in await second.engine.list_settings()}
        assert stored["model.live.name"] == "b"
    finally:
        await second.stop(grace=0)


async def test_hot_swap_the_real_model(http, admin, channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    async def model_health() -> int:
        request = health_pb2.HealthCheckRequest(service=model_health_name(GEMMA))
        return (await health.Check(request)).status

    unloaded = await admin.post(f"/admin/models/{GEMMA}/unload")
    assert unloaded.json()["state"] == "unloaded"
    assert await model_health() == health_pb2.HealthCheckResponse.NOT_SERVING
    loaded = await admin.post("/admin/models/live/load")
    assert loaded.json()["id"] == GEMMA and loaded.json()["state"] == "loaded"
    assert await model_health() == health_pb2.HealthCheckResponse.SERVING
    reply = await http.post("/v1/chat/completions", json=chat(GEMMA, max_tokens=4))
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] > 0


async def test_unload_all(http, admin) -> None:
    await http.post("/v1/chat/completions", json=chat("mock"))
    assert "mock" in (await admin.post("/admin/models/unload")).json()["unloaded"]
    await admin.post("/admin/models/live/load")  # leave the real model loaded for the other tests


@pytest.fixture
async def single_model_gateway(postgres_url: str):
    """A separate mesh on one 'GPU': two slow mock models that cannot be loaded together."""
    registry = ModelRegistry.from_specs(
        [ModelSpec(name=name, backend="mock", options={"token_delay_seconds": 0.02}) for name in ("m1", "m2", "m3")]
    )
    settings = InferenceSettings(
        port=0, single_model=True, max_waiting_requests=4, retry_after_seconds=3, preload_default_model=False
    )
    server = InferenceServer(settings, registry=registry)
    await server.start()
    uvicorn_server, task, url = await serve_http(
        build_app(gateway_settings(inference_target=f"127.0.0.1:{server.port}"))
    )
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        yield http, server
    uvicorn_server.should_exit = True
    await task
    await server.stop(grace=0)


async def stream_chat(http: httpx.AsyncClient, model: str, text: str) -> tuple[list[str], list[str]]:
    """(SSE comment lines, data lines) of one streamed chat."""
    comments, data = [], []
    async with http.stream("POST", "/v1/chat/completions", json=chat(model, text, stream=True)) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("data:"):
                data.append(line)
    return comments, data


async def test_single_model_serves_every_request_with_queue_visibility(single_model_gateway) -> None:
    http, server = single_model_gateway
    words = " ".join(["w"] * 10)
    first = asyncio.ensure_future(stream_chat(http, "m1", words))
    while server.models.running(server.engine.router.resolve("m1")) == 0:
        await asyncio.sleep(0.01)  # until m1 is generating
    others = [asyncio.ensure_future(stream_chat(http, model, words)) for model in ("m2", "m1", "m2")]
    while server.models.waiting < 2:
        await asyncio.sleep(0.01)  # until the m2 requests queue
    queue = (await http.get("/v1/queue")).json()
    waiting = {line["model"]: line["waiting"] for line in queue["models"]}
    assert waiting["m2"] == 2 and queue["total_waiting"] == 2 and queue["max_waiting"] == 4

    results = await asyncio.gather(first, *others)
    for _, data in results:  # every request completed normally: nothing was aborted by a swap
        assert data[-1] == "data: [DONE]"
        assert '"finish_reason":"stop"' in data[-2]
    m2_comments = results[1][0] + results[3][0]  # the two m2 streams, which arrive in either order
    assert {c for c in m2_comments if c.startswith(": queued")} >= {
        ": queued position=1 model=m2",
        ": queued position=2 model=m2",
    }
    assert ": loading_model model=m2" in m2_comments


async def test_queue_overflow_is_429_with_retry_after(single_model_gateway) -> None:
    http, server = single_model_gateway
    words = " ".join(["w"] * 30)
    busy = asyncio.ensure_future(http.post("/v1/chat/completions", json=chat("m1", words)))
    while server.models.running(server.engine.router.resolve("m1")) == 0:
        await asyncio.sleep(0.01)
    queued = [asyncio.ensure_future(http.post("/v1/chat/completions", json=chat("m2"))) for _ in range(4)]
    while server.models.waiting < 4:
        await asyncio.sleep(0.01)
    for stream in (False, True):
        response = await http.post("/v1/chat/completions", json=chat("m3", stream=stream))
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert response.json()["error"]["code"] == "queue_full"
        assert response.json()["error"]["type"] == "rate_limit_error"
    assert all(r.status_code == 200 for r in await asyncio.gather(busy, *queued))
