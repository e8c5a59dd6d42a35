"""The gateway end to end: HTTP and the official openai SDK -> gateway -> gRPC -> inference (mock backend)."""

import json

import httpx
import openai
import pytest

from services.gateway.app import build_app
from tests.conftest import GEMMA, gateway_settings, serve_http


async def test_chat_completion(client) -> None:
    response = await client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hello"}])
    assert response.choices[0].message.content == "[mock-text:mock] hello"
    assert response.choices[0].finish_reason == "stop"
    assert response.model == "mock"
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


async def test_chat_stream_with_usage_chunk(client) -> None:
    stream = await client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "a b"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[mock-text:mock] a b"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_without_usage_ends_with_done(http) -> None:
    body = {"model": "mock", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) for line in lines[:-1])


async def test_n_choices_stream_and_unary(client) -> None:
    response = await client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "q"}], n=2)
    assert [c.index for c in response.choices] == [0, 1]
    stream = await client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "q"}], n=2, stream=True
    )
    texts = {0: "", 1: ""}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "[mock-text:mock] q", 1: "[mock-text:mock] q"}


async def test_completions_unary_and_stream(client) -> None:
    response = await client.completions.create(model="mock", prompt="one two", max_tokens=2)
    assert response.choices[0].text == "[mock-text:mock] one"
    assert response.choices[0].finish_reason == "length"
    stream = await client.completions.create(model="mock", prompt=["a", "b"], stream=True)
    texts = {}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "[mock-text:mock] a", 1: "[mock-text:mock] b"}


async def test_models(client) -> None:
    ids = [model.id async for model in client.models.list()]
    # Models, each followed by the slot, tier and alias names that reach it.
    assert ids == [
        "gemma-3-270m",
        "live",
        "background",
        "gemma-hf",
        "gemma-hermes",
        "gemma-llama3-json",
        "gemma-hf-hermes",
        "gemma-batched",
        "mock",
        "mock-alias",
        "mock-slow",
        "all-MiniLM-L6-v2",
    ]
    assert (await client.models.retrieve("live")).id == "gemma-3-270m"


async def test_unknown_model_is_404_model_not_found(client) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert raised.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}], stream=True)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "mock", "messages": []}, "messages"),
        ({"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
        ({"model": "mock", "messages": [{"role": "user", "content": "x"}], "temperature": 2.5}, "temperature"),
        ({"model": "mock", "messages": [{"role": "user", "content": "x"}], "n": 100}, "n"),
        ({"model": "mock", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "mock", "prompt": [1, 2]}, "prompt"),
    ],
)
async def test_bad_input_is_400_naming_the_parameter(http, body, param) -> None:
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    response = await http.post(path, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]


async def test_images_to_a_text_only_model_are_400(http) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}}
    body = {"model": GEMMA, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, image]}]}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "does not accept images" in response.json()["error"]["message"]
    seen = await http.post("/v1/chat/completions", json={**body, "model": "mock"})  # a stand-in vision model
    assert seen.json()["choices"][0]["message"]["content"] == "[mock-text:mock] x [1 image]"


async def test_malformed_json_is_400(http) -> None:
    response = await http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_body_over_the_limit_is_413(http) -> None:
    big = {"model": "mock", "messages": [{"role": "user", "content": "x" * 100_000}]}
    response = await http.post("/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    async def chunked():  # no Content-Length: the limit applies while reading
        yield b'{"model": "mock", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"x" * 10_000
        yield b'"}]}'

    response = await http.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert response.status_code == 413


async def test_unknown_route_uses_the_error_body(http) -> None:
    response = await http.get("/v1/nothing")
    assert response.status_code == 404
    assert "error" in response.json()


async def test_health_reports_upstreams(http) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["services"] == {
        "gateway": "SERVING",
        "inference": "SERVING",
        "embeddings": "SERVING",
        "scheduler": "SERVING",
    }
    assert body["current_model"] == "gemma-3-270m"  # the live slot's
    assert body["queue"]["capacity"] > 0 and body["queue"]["waiting"] >= 0


async def test_metrics_summary(http) -> None:
    await http.post("/v1/chat/completions", json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
    await http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": []})
    summary = (await http.get("/metrics/summary")).json()
    requests = summary["requests"]
    assert requests["total"] >= 2 and requests["successful"] >= 1 and requests["failed"] >= 1
    assert 0 < requests["success_rate"] < 1 and summary["peak_concurrency"] >= 1
    assert summary["uptime_seconds"] > 0 and summary["current_model"] == "gemma-3-270m"
    assert set(summary["queue"]) == {"waiting", "capacity"}


async def test_inference_down_is_503(tmp_path) -> None:
    settings = gateway_settings(
        inference_target=f"unix:{tmp_path}/nobody-listens.sock",
        embeddings_target=f"unix:{tmp_path}/nobody-listens-either.sock",
        request_timeout_seconds=5,
    )
    server, task, url = await serve_http(build_app(settings))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            health = await http.get("/health")
            assert health.status_code == 503
            assert health.json()["services"]["inference"] == "UNREACHABLE"
            for stream in (False, True):
                body = {"model": "mock", "messages": [{"role": "user", "content": "x"}], "stream": stream}
                response = await http.post("/v1/chat/completions", json=body)
                assert response.status_code == 503
                assert response.json()["error"]["type"] == "server_error"
            assert (await http.get("/v1/models")).status_code == 503
            response = await http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "x"})
            assert response.status_code == 503
    finally:
        server.should_exit = True
        await task


async def test_replies_have_openais_shape_down_to_refusal_null(http) -> None:
    """What strictly generated OpenAI clients require, and /openapi.json documents it."""
    asked = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
    message = (await http.post("/v1/chat/completions", json=asked)).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "[mock-text:mock] hi", "refusal": None}
    paths = (await http.get("/openapi.json")).json()["paths"]
    for path, model in (("/v1/chat/completions", "ChatCompletion"), ("/v1/completions", "Completion")):
        content = paths[path]["post"]["responses"]["200"]["content"]
        assert content["application/json"]["schema"]["$ref"].endswith(f"/{model}") and "text/event-stream" in content


async def test_completions_echo_puts_each_prompt_before_its_choices(client) -> None:
    reply = await client.completions.create(model="mock", prompt=["x y", "z"], n=2, echo=True)
    assert [c.text for c in reply.choices] == ["x y[mock-text:mock] x y"] * 2 + ["z[mock-text:mock] z"] * 2
    stream = await client.completions.create(model="mock", prompt=["x y", "z"], n=2, echo=True, stream=True)
    texts: dict[int, str] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert [texts[i] for i in range(4)] == [c.text for c in reply.choices]
