"""`make run` (python -m services): the whole mesh comes up, answers, heals after a service is
killed, leaves nothing behind when the launcher itself is killed, and stops cleanly on Ctrl-C."""

import asyncio
import json
import os
import signal
import socket
import sys
import time

import httpx
import psutil
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_mesh_starts_answers_and_stops_on_ctrl_c(tmp_path) -> None:
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "LLMMESH_GATEWAY_PORT": str(http_port),
        "LLMMESH_INFERENCE_PORT": str(grpc_port),
        "LLMMESH_EMBEDDINGS_PORT": str(free_port()),
        "LLMMESH_SCHEDULER_PORT": str(free_port()),
        "LLMMESH_TRAINER_PORT": str(free_port()),
        **{f"LLMMESH_{name}_METRICS_PORT": "0" for name in ("INFERENCE", "EMBEDDINGS", "SCHEDULER", "TRAINER")},
        "LLMMESH_INFERENCE_DATA_DIR": str(tmp_path / "data"),  # made by the launcher; PostgreSQL lives here
        "BACKGROUND_MODEL_NAME": "mock",  # jobs run on the background slot
    }
    for name in (
        "LLMMESH_GATEWAY_INFERENCE_TARGET",
        "LLMMESH_GATEWAY_EMBEDDINGS_TARGET",
        "LLMMESH_GATEWAY_SCHEDULER_TARGET",
        "LLMMESH_GATEWAY_TRAINER_TARGET",
        "LLMMESH_ARTIFACTS_DIR",
        "LLMMESH_INTERNAL_TOKEN",
        "LLMMESH_JWT_SECRET",
        "LLMMESH_API_KEY_SECRET",
        "DATABASE_URL",
        "NATS_URL",
    ):
        env.pop(name, None)
    process, banner = await start_launcher(env)
    try:
        # The banner hands out a superuser JWT for the admin endpoints.
        admin_jwt = next(line.split("Bearer ")[1].strip() for line in banner if "Bearer " in line)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as http:
            assert (await http.get("/health")).status_code == 200
            response = await http.post(
                "/v1/chat/completions", json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
            )
            assert response.json()["choices"][0]["message"]["content"] == "[mock-text:mock] hi"
            assert (await http.put("/settings/model.live.name", json={"value": "mock"})).status_code == 401
            admin = {"Authorization": f"Bearer {admin_jwt}"}
            setting = await http.put("/settings/model.live.name", json={"value": "mock"}, headers=admin)
            assert setting.status_code == 200  # stored in the embedded PostgreSQL
            # A job on the embedded NATS JetStream.
            job = await http.post(
                "/internal/queue/enqueue",
                json={"job_type": "chat", "request": {"messages": [{"role": "user", "content": "later"}]}},
            )
            assert job.status_code == 202, job.text
            async with http.stream("GET", f"/v1/jobs/{job.json()['id']}/events") as events:
                lines = [line async for line in events.aiter_lines() if line.startswith("data: {")]
            assert '"state":"succeeded"' in lines[-1] and "[mock-text:mock] later" in lines[-1]
            assert (await http.get("/v1/adapters")).json() == {"object": "list", "data": []}  # the trainer is up
            await _each_process_reports_itself(http, admin, tmp_path / "data" / "supervisor.json")
            await _inference_heals_after_kill_9(http, tmp_path / "data" / "supervisor.json")
            for dependency in ("nats", "postgres"):
                await _a_dependency_heals_after_kill_9(http, tmp_path / "data" / "supervisor.json", dependency)
        await _nats_refuses_clients_without_credentials(banner)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        async with asyncio.timeout(60):
            assert await process.wait() == 0
        assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()
        assert (tmp_path / "data" / "nats" / "jetstream").is_dir()
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def start_launcher(env: dict[str, str]) -> tuple[asyncio.subprocess.Process, list[str]]:
    """The launcher, once its banner says the mesh is up; and the banner's lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", env=env, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    banner: list[str] = []
    async with asyncio.timeout(240):
        while b"LLM Mesh is up" not in (line := await process.stdout.readline()):
            assert line, "the launcher exited before the mesh was up"
            banner.append(line.decode())  # what it said while starting (the embedded servers)
        while b"Press Ctrl-C" not in (line := await process.stdout.readline()):
            banner.append(line.decode())
    return process, banner


async def _each_process_reports_itself(http: httpx.AsyncClient, admin: dict[str, str], status_file) -> None:
    """The console's Overview and Logs views: each service's memory and CPU, and its log lines."""
    assert (await http.get("/admin/processes")).status_code == 401
    processes = {p["service"]: p for p in (await http.get("/admin/processes", headers=admin)).json()["data"]}
    supervised = json.loads(status_file.read_text())["services"]
    for name in ("inference", "embeddings", "scheduler", "trainer", "gateway"):
        assert processes[name]["state"] == "up", processes[name]
        assert processes[name]["pid"] == supervised[name]["pid"]  # each answers for itself
        assert processes[name]["rss_bytes"] > 20 * 2**20 and processes[name]["cpu_seconds"] > 0
    for name in ("inference", "scheduler"):
        async with http.stream("GET", f"/admin/logs/{name}", headers=admin, params={"tail": 50}) as response:
            assert response.status_code == 200
            events = (line async for line in response.aiter_lines() if line.startswith("data: "))
            first = json.loads(json.loads((await anext(events)).removeprefix("data: "))["line"])
        assert first["service"] == name and first["message"], first
    missing = await http.get("/admin/logs/nothing", headers=admin)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "service"


async def _inference_heals_after_kill_9(http: httpx.AsyncClient, status_file) -> None:
    pid = json.loads(status_file.read_text())["services"]["inference"]["pid"]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    chat = {"model": "mock", "messages": [{"role": "user", "content": "again"}]}
    states = set()
    async with asyncio.timeout(120):  # the bound on recovery
        while True:
            health = (await http.get("/health")).json()
            states.add(health["services"]["inference"])
            response = await http.post("/v1/chat/completions", json=chat)
            if response.status_code == 200:
                break
            assert response.status_code == 503, response.text  # never a hang or a 500 meanwhile
            assert response.headers.get("retry-after"), response.headers
            await asyncio.sleep(0.2)  # polling for the restarted service
    print(f"inference recovered {time.monotonic() - killed:.1f} s after kill -9 (seen: {sorted(states)})")
    status = json.loads(status_file.read_text())["services"]["inference"]
    assert status["restarts"] == 1 and status["last_exit"] == "killed by SIGKILL" and status["pid"] != pid
    assert (await http.get("/health")).json()["restarts"] == {"inference": 1}


async def _job(http: httpx.AsyncClient, text: str) -> dict | None:
    """A chat job on the background slot (mock), followed to its end; None when the queue
    answered 503 (with Retry-After): it is away, and the job was not accepted."""
    submitted = await http.post(
        "/internal/queue/enqueue",
        json={"job_type": "chat", "request": {"messages": [{"role": "user", "content": text}]}},
    )
    if submitted.status_code == 503 and submitted.headers.get("retry-after"):
        return None
    assert submitted.status_code == 202, submitted.text
    async with http.stream("GET", f"/v1/jobs/{submitted.json()['id']}/events") as events:
        lines = [line async for line in events.aiter_lines() if line.startswith("data: {")]
    return dict(json.loads(lines[-1].removeprefix("data: ")))


async def _a_dependency_heals_after_kill_9(http: httpx.AsyncClient, status_file, name: str) -> None:
    """kill -9 of the embedded nats-server or PostgreSQL: /health says so while it is down (503
    degraded, never "ok"), APIs that need it answer 503 with Retry-After (never a 500 or a hang),
    the launcher starts it again on the same data, and nothing accepted is lost or run twice."""
    async with asyncio.timeout(120):  # a healthy mesh first (a restarted inference loads its model)
        while (await http.get("/health")).status_code != 200:
            await asyncio.sleep(0.2)
    # /health is the gateway's view: the scheduler's own channel to a restarted inference redials
    # within its backoff (3 s at most), and a job meanwhile is retried. One job clears that.
    await _job(http, f"warm-up before {name}")
    before = await _job(http, f"before {name}")
    assert before is not None and before["state"] == "succeeded" and before["attempt"] == 1
    pid = json.loads(status_file.read_text())["services"][name]["pid"]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    seen_down = False
    async with asyncio.timeout(120):  # the bound on recovery
        while True:
            health = await http.get("/health")
            state = health.json().get("dependencies", {}).get(name, {})
            if state.get("state") == "SERVING" and state.get("restarts", 0) >= 1:
                break
            if state.get("state") != "SERVING":
                seen_down = True
                assert health.status_code == 503 and health.json()["status"] == "degraded", health.text
                assert name in health.json()["down"]
            jobs = await http.get("/v1/jobs")
            assert jobs.status_code in (200, 503), jobs.text  # the job store away: 503, never a 500
            if jobs.status_code == 503:
                assert jobs.headers.get("retry-after"), jobs.headers
            await asyncio.sleep(0.1)  # polling the launcher's view
    print(f"{name} recovered {time.monotonic() - killed:.1f} s after kill -9")
    assert seen_down, f"/health never said {name} was down"
    status = json.loads(status_file.read_text())["services"][name]
    assert status["last_exit"] and status["pid"] != pid
    async with asyncio.timeout(60):  # clients reconnect by themselves: a new job is accepted and runs
        while (after := await _job(http, f"after {name}")) is None:
            await asyncio.sleep(0.5)
    assert after["state"] == "succeeded", after
    listed = (await http.get(f"/v1/jobs/{before['id']}")).json()  # still there, run once
    assert listed["state"] == "succeeded" and listed["attempt"] == 1


async def test_a_killed_launcher_leaves_nothing_behind_and_the_next_run_starts(tmp_path) -> None:
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith("LLMMESH_") and k not in ("DATABASE_URL", "NATS_URL")
    }

    def mesh_env() -> dict[str, str]:
        return {
            **inherited,
            "LLMMESH_GATEWAY_PORT": str(free_port()),
            "LLMMESH_INFERENCE_PORT": str(free_port()),
            "LLMMESH_EMBEDDINGS_PORT": str(free_port()),
            "LLMMESH_SCHEDULER_PORT": str(free_port()),
            "LLMMESH_TRAINER_PORT": str(free_port()),
            **{f"LLMMESH_{name}_METRICS_PORT": "0" for name in ("INFERENCE", "EMBEDDINGS", "SCHEDULER", "TRAINER")},
            "LLMMESH_INFERENCE_DATA_DIR": str(tmp_path / "data"),
            "LLMMESH_INFERENCE_PRELOAD_DEFAULT_MODEL": "false",
        }

    process, _ = await start_launcher(mesh_env())
    try:
        status = json.loads((tmp_path / "data" / "supervisor.json").read_text())["services"]
        children = [psutil.Process(service["pid"]) for service in status.values() if service["kind"] == "service"]
        children.append(psutil.Process(int((tmp_path / "data" / "nats" / "nats-server.pid").read_text())))
        os.kill(process.pid, signal.SIGKILL)  # not the group: the children must notice by themselves
        await process.wait()
        _, alive = await asyncio.to_thread(psutil.wait_procs, children, 60)
        assert not alive, f"left running: {alive}"
        # The next run on the same data directory starts (reusing the PostgreSQL left running)...
        process, _ = await start_launcher(mesh_env())
        os.killpg(process.pid, signal.SIGINT)
        async with asyncio.timeout(60):
            assert await process.wait() == 0
        # ...and stops it when it ends: nothing outlives the runs.
        pgdata = str(tmp_path / "data" / "postgres")
        servers = [p for p in psutil.process_iter(["name", "cmdline"]) if pgdata in (p.info["cmdline"] or [])]
        _, alive = await asyncio.to_thread(psutil.wait_procs, servers, 30)
        assert not alive, f"PostgreSQL left running: {alive}"
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def _nats_refuses_clients_without_credentials(banner: list[str]) -> None:
    import nats
    from nats.errors import Error as NatsError

    line = next(line for line in banner if line.startswith("Embedded NATS JetStream:"))
    address = line.split("nats://")[1].split()[0]
    assert "password" not in line.split("(")[0]  # the launcher never prints the password itself
    with pytest.raises((NatsError, OSError)):
        client = await nats.connect(f"nats://{address}", allow_reconnect=False, connect_timeout=5)
        await client.close()
