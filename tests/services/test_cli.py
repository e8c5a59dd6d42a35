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
import jwt
import pytest
from typer.testing import CliRunner

from services import cli
from services.cli import app, global_options_first
from tests.conftest import JWT_SECRET, admin_jwt


async def run_cli(gateway_url: str, *args: str, token: str | None = None, stdin: str = "") -> tuple[int, str, str]:
    """Exit code, stdout and stderr, as the console script runs it (global options anywhere).
    Runs in a thread: the CLI's HTTP calls block, and the gateway serves on this loop."""
    arguments = global_options_first(["--url", gateway_url, *(["--token", token] if token else []), *args])
    result = await asyncio.to_thread(CliRunner().invoke, app, arguments, input=stdin)
    return result.exit_code, result.stdout, result.stderr


async def llmmesh(gateway_url: str, *args: str, token: str | None = None, stdin: str = "") -> tuple[int, str]:
    """Exit code and what the terminal shows (stdout and stderr together)."""
    code, out, err = await run_cli(gateway_url, *args, token=token, stdin=stdin)
    return code, out + err


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
    assert "you>" not in output  # piped input: no prompts


async def test_chat_answers_one_prompt_and_says_so_in_json(gateway_url: str) -> None:
    code, out, err = await run_cli(gateway_url, "chat", "What is the sea?", "--model", "mock")
    assert code == 0 and "[mock-text:mock] What is the sea?" in out and not err
    code, out, _ = await run_cli(gateway_url, "chat", "Hi", "--model", "mock", "--json")
    answer = json.loads(out)
    assert answer["content"].startswith("[mock-text:mock] Hi") and answer["finish_reason"] == "stop"


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


async def test_errors_are_one_clear_line_on_stderr(gateway_url: str) -> None:
    code, out, err = await run_cli(gateway_url, "--json", "models", "load", "no-such-model", token=admin_jwt())
    assert code == 1 and not out  # --json output stays JSON: nothing on stdout
    assert "404" in err and "no-such-model" in err and "Traceback" not in err and err.count("\n") == 1
    code, out, err = await run_cli("http://127.0.0.1:9", "models", "list")
    assert code == 1 and not out and "cannot reach the gateway" in err


async def test_global_options_after_the_command(gateway_url: str) -> None:
    code, out, _ = await run_cli(gateway_url, "models", "list", "--json", token=admin_jwt())
    assert code == 0 and "gemma-3-270m" in {model["id"] for model in json.loads(out)}
    assert global_options_first(["status", "--url=http://x", "--json", "--", "--json"]) == [
        "--url=http://x",
        "--json",
        "status",
        "--",
        "--json",
    ]


async def test_jobs_watch_exits_1_when_the_job_did_not_succeed(gateway_url: str) -> None:
    headers = {"Authorization": f"Bearer {admin_jwt()}"}
    async with httpx.AsyncClient(base_url=gateway_url, headers=headers) as http:
        body = {"job_type": "chat", "request": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}}
        job = (await http.post("/internal/queue/enqueue", json={**body, "priority": 0})).json()
        await http.post(f"/v1/jobs/{job['id']}/cancel")
        state = (await http.get(f"/v1/jobs/{job['id']}")).json()["state"]
    code, out, _ = await run_cli(gateway_url, "--json", "jobs", "watch", job["id"], token=admin_jwt())
    assert json.loads(out)["state"] == state
    assert code == (0 if state == "succeeded" else 1)


def test_help_shows_flags_as_flags() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "--json" in result.stdout and "<bool>" not in result.stdout
    assert "--url URL" in result.stdout


def test_tables_show_dates_and_lists_as_people_read_them() -> None:
    assert cli._cell("created_at", 86400) == "1970-01-02 00:00:00 UTC"
    assert cli._cell("scopes", ["chat", "jobs"]) == "chat, jobs"
    assert cli._cell("revoked_at", None) == "" and cli._cell("attempt", 2) == "2"


async def test_token_mints_a_superuser_jwt_the_gateway_accepts(
    gateway_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMMESH_JWT_SECRET", JWT_SECRET)
    code, out, _ = await run_cli(gateway_url, "token", "--subject", "alice", "--ttl", "60")
    assert code == 0 and jwt.decode(out.strip(), options={"verify_signature": False})["sub"] == "alice"
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        keys = await http.get("/admin/keys", headers={"Authorization": f"Bearer {out.strip()}"})
    assert keys.status_code == 200, keys.text
    # A gateway on this machine named by another loopback spelling still gets the local token.
    localhost = gateway_url.replace("127.0.0.1", "localhost")
    code, out, err = await run_cli(localhost, "--json", "keys", "list")
    assert code == 0, err


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


def test_documented_entry_points_run_from_a_fresh_shell(tmp_path: Path) -> None:
    """README's commands outside make: no PYTHONPATH, another directory (make proto registers gen/)."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    script = str(Path(sys.executable).with_name("llmmesh"))
    for command in ([sys.executable, "-m", "services.gateway.cli", "token", "--help"], [script, "token", "--help"]):
        result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
