"""`make run` (python -m services): the whole mesh comes up, answers, and stops cleanly on Ctrl-C."""

import asyncio
import os
import signal
import socket
import sys

import httpx


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
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", env=env, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    try:
        async with asyncio.timeout(240):
            while b"LLM Mesh is up" not in (line := await process.stdout.readline()):
                assert line, "the launcher exited before the mesh was up"
            banner = []
            while b"Press Ctrl-C" not in (line := await process.stdout.readline()):
                banner.append(line.decode())
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
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        async with asyncio.timeout(60):
            assert await process.wait() == 0
        assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()
        assert (tmp_path / "data" / "nats" / "jetstream").is_dir()
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
