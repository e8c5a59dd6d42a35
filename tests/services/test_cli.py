"""`llmmesh`, the command line, against the session's gateway: through typer's test runner, and
once as the installed console script in a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from typer.testing import CliRunner

from services.cli import app
from tests.conftest import admin_jwt


async def llmmesh(gateway_url: str, *args: str, token: str | None = None, stdin: str = "") -> tuple[int, str]:
    """Runs in a thread: the CLI's HTTP calls block, and the gateway serves on this loop."""
    arguments = ["--url", gateway_url, *(["--token", token] if token else []), *args]
    result = await asyncio.to_thread(CliRunner().invoke, app, arguments, input=stdin)
    return result.exit_code, result.output


async def test_models_list_and_status(gateway_url: str) -> None:
    code, output = await llmmesh(gateway_url, "--json", "models", "list", token=admin_jwt())
    assert code == 0, output
    assert "gemma-3-270m" in {model["id"] for model in json.loads(output)}
    code, output = await llmmesh(gateway_url, "status", token=admin_jwt())
    assert code == 0 and "inference" in output and "gemma-3-270m" in output


async def test_chat_streams_answers_and_keeps_the_conversation(gateway_url: str) -> None:
    code, output = await llmmesh(gateway_url, "chat", "--model", "mock", stdin="first\nsecond\n\n")
    assert code == 0, output
    assert "[mock-text:mock] first" in output and "[mock-text:mock] second" in output


async def test_keys_and_jobs(gateway_url: str) -> None:
    code, output = await llmmesh(
        gateway_url, "--json", "keys", "create", "--name", "cli", "--scopes", "chat,jobs", token=admin_jwt()
    )
    assert code == 0, output
    key = json.loads(output)
    assert key["key"].startswith("llmm_")
    code, output = await llmmesh(gateway_url, "--json", "keys", "list", token=admin_jwt())
    assert key["id"] in {k["id"] for k in json.loads(output)}

    async with httpx.AsyncClient(base_url=gateway_url, headers={"Authorization": f"Bearer {key['key']}"}) as http:
        body = {"job_type": "chat", "request": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}}
        job = (await http.post("/internal/queue/enqueue", json=body)).json()
    code, output = await llmmesh(gateway_url, "--json", "jobs", "watch", job["id"], token=key["key"])
    assert code == 0 and json.loads(output)["state"] == "succeeded"
    code, output = await llmmesh(gateway_url, "--json", "jobs", "list", token=key["key"])
    assert [j["id"] for j in json.loads(output)] == [job["id"]]  # the key's own jobs only
    code, output = await llmmesh(gateway_url, "keys", "revoke", key["id"], token=admin_jwt())
    assert code == 0


async def test_errors_are_one_clear_line(gateway_url: str) -> None:
    code, output = await llmmesh(gateway_url, "models", "load", "no-such-model", token=admin_jwt())
    assert code == 1 and "404" in output and "no-such-model" in output and "Traceback" not in output
    code, output = await llmmesh("http://127.0.0.1:9", "models", "list")
    assert code == 1 and "cannot reach the gateway" in output


async def test_console_prints_a_signed_in_address(gateway_url: str) -> None:
    token = admin_jwt()
    code, output = await llmmesh(gateway_url, "--json", "console", token=token)
    assert code == 0, output
    address = json.loads(output)["url"]
    assert address == f"{gateway_url}/console/#token={token}"  # a #fragment: never sent to the server
    async with httpx.AsyncClient() as http:
        assert (await http.get(address.split("#")[0])).status_code == 200


async def test_the_console_script_runs_as_a_subprocess(gateway_url: str) -> None:
    script = Path(sys.executable).with_name("llmmesh")
    environment = {**os.environ, "LLMMESH_URL": gateway_url, "LLMMESH_TOKEN": admin_jwt()}
    result = await asyncio.to_thread(
        subprocess.run, [str(script), "--json", "models", "list"], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0, result.stderr
    assert "gemma-3-270m" in {model["id"] for model in json.loads(result.stdout)}
