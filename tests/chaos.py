"""The chaos soak (`make chaos`): a `make run` mesh under a steady mixed load while processes are
killed with SIGKILL (or stopped with SIGSTOP for a few seconds) at random; then a report of what
was sent, what failed and how, what was lost, and how long each kind of kill took to heal.

    python -m tests.chaos --minutes 10 [--seed 1] [--json .data/chaos.json]

Everything targets 127.0.0.1, every loop is bounded and the run stops by itself. The load:
streamed and unary chat, embeddings, chat and embed jobs with callbacks to a local receiver,
one small batch and one short adapter training. Kills rotate over the gateway, inference,
embeddings, scheduler, trainer, nats-server and PostgreSQL. `tests/test_chaos.py` runs a
short smoke of it in `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import os
import random
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TARGETS = ("gateway", "inference", "embeddings", "scheduler", "trainer", "nats", "postgres")
REQUEST_TIMEOUT = 60.0  # a request that takes longer is a hang
HEAL_TIMEOUT = 120.0  # a kill not healed by then is a failure


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Tally:
    sent: int = 0
    succeeded: int = 0
    unavailable: int = 0  # 503 with Retry-After, or the gateway itself down: expected in an outage
    failed: int = 0  # anything else: must be 0
    hung: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.failures) < 20:
            self.failures.append(what[:300])


@dataclass
class Soak:
    url: str
    status_file: Path
    callback_url: str
    rng: random.Random
    tally: Tally = field(default_factory=Tally)
    jobs: dict[str, str] = field(default_factory=dict)  # accepted job id -> job type
    callbacks: collections.Counter[str] = field(default_factory=collections.Counter)
    recoveries: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    untruthful: list[str] = field(default_factory=list)
    kills: collections.Counter[str] = field(default_factory=collections.Counter)
    outage: str = ""  # what is down now, as the killer knows

    async def request(self, http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        self.tally.sent += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                response = await http.request(method, path, **kwargs)
        except TimeoutError:
            self.tally.hung += 1
            return None
        except httpx.TransportError as error:  # the gateway is down (killed or stopped): an outage
            self.tally.unavailable += 1 if self.outage else 0
            if not self.outage:
                self.tally.fail(f"{method} {path}: {type(error).__name__} with nothing killed")
            return None
        if response.status_code == 503 and response.headers.get("retry-after"):
            self.tally.unavailable += 1
        elif response.status_code >= 400:
            self.tally.fail(f"{method} {path}: {response.status_code} {response.text}")
        else:
            self.tally.succeeded += 1
        return response

    # ---- the load ----

    async def chat_loop(self, http: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            body = {"model": "mock", "messages": [{"role": "user", "content": "chaos"}], "max_tokens": 8}
            await self.request(http, "POST", "/v1/chat/completions", json=body)
            await self.stream(http, body)
            await asyncio.sleep(0.2)

    async def stream(self, http: httpx.AsyncClient, body: dict[str, Any]) -> None:
        self.tally.sent += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                    if response.status_code == 503 and response.headers.get("retry-after"):
                        self.tally.unavailable += 1
                        return
                    lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
            if response.status_code == 200 and lines and lines[-1] == "data: [DONE]":
                errors = [line for line in lines if '"error"' in line]
                if errors and self.outage:  # cut by an outage, and told so: an error event, then [DONE]
                    self.tally.unavailable += 1
                elif errors:
                    self.tally.fail(f"stream: {errors[0]}")
                else:
                    self.tally.succeeded += 1
            else:
                self.tally.fail(f"stream: {response.status_code} {lines[-1:] if lines else ''}")
        except TimeoutError:
            self.tally.hung += 1
        except httpx.TransportError as error:
            if self.outage:
                self.tally.unavailable += 1
            else:
                self.tally.fail(f"stream: {type(error).__name__} with nothing killed")

    async def embeddings_loop(self, http: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            body = {"model": "all-MiniLM-L6-v2", "input": ["a cat", "a dog"]}
            await self.request(http, "POST", "/v1/embeddings", json=body)
            await asyncio.sleep(0.5)

    async def jobs_loop(self, http: httpx.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            if self.rng.random() < 0.5:
                job = {"job_type": "chat", "request": {"messages": [{"role": "user", "content": "job"}]}}
            else:
                job = {"job_type": "embed", "request": {"model": "all-MiniLM-L6-v2", "input": ["job"]}}
            await self.submit(http, {**job, "callback_url": self.callback_url})
            await asyncio.sleep(1.0)

    async def submit(self, http: httpx.AsyncClient, job: dict[str, Any]) -> None:
        response = await self.request(http, "POST", "/internal/queue/enqueue", json=job)
        if response is not None and response.status_code in (200, 202):
            self.jobs[response.json()["id"]] = job["job_type"]

    async def batch_and_training(self, http: httpx.AsyncClient, training: bool = True) -> None:
        """One small batch and one short adapter training, submitted until accepted."""
        lines = "".join(
            json.dumps(
                {
                    "custom_id": f"c{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "mock", "messages": [{"role": "user", "content": f"line {i}"}]},
                }
            )
            + "\n"
            for i in range(3)
        )
        while True:
            upload = await self.request(
                http,
                "POST",
                "/v1/files",
                files={"file": ("in.jsonl", io.BytesIO(lines.encode()))},
                data={"purpose": "batch"},
            )
            if upload is not None and upload.status_code == 200:
                break
            await asyncio.sleep(1)
        body = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        while True:
            batch = await self.request(http, "POST", "/v1/batches", json=body)
            if batch is not None and batch.status_code == 200:
                self.jobs[batch.json()["id"]] = "batch"
                break
            await asyncio.sleep(1)
        if not training:
            return
        dataset = [
            {"messages": [{"role": "user", "content": f"word {i}?"}, {"role": "assistant", "content": "PINEAPPLE"}]}
            for i in range(2)
        ]
        train = {
            "job_type": "adapter_train",
            "callback_url": self.callback_url,
            "request": {
                "base_model": "gemma-3-270m",
                "dataset": dataset,
                "hyperparameters": {"max_steps": 2, "batch_size": 2, "max_seq_length": 64},
            },
        }
        while not any(kind == "adapter_train" for kind in self.jobs.values()):
            await self.submit(http, train)
            await asyncio.sleep(1)

    # ---- the killer ----

    def pid_of(self, target: str) -> int | None:
        try:
            return int(json.loads(self.status_file.read_text())["services"][target]["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def killer(self, http: httpx.AsyncClient, until: float, interval: tuple[float, float]) -> None:
        order = list(TARGETS)
        self.rng.shuffle(order)
        turn = 0
        while time.monotonic() + interval[0] < until:
            await asyncio.sleep(self.rng.uniform(*interval))
            target = order[turn % len(order)]
            turn += 1
            pid = self.pid_of(target)
            if pid is None:
                continue
            stop = target not in ("nats", "postgres") and self.rng.random() < 0.15
            self.outage = target
            started = time.monotonic()
            if stop:  # a process that hangs for a few seconds, then goes on
                self.kills[f"{target} (SIGSTOP)"] += 1
                os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(self.rng.uniform(2, 5))
                os.kill(pid, signal.SIGCONT)
            else:
                self.kills[target] += 1
                os.kill(pid, signal.SIGKILL)
            healed = await self.heal(http, target, pid, started, stop)
            self.outage = ""
            if healed is None:
                self.untruthful.append(f"{target} did not heal within {HEAL_TIMEOUT:.0f} s")
            else:
                self.recoveries[target].append(healed)

    async def heal(self, http: httpx.AsyncClient, target: str, pid: int, started: float, stopped: bool) -> float | None:
        """Seconds until /health is "ok" again with `target` running anew (or resumed); checks on
        the way that /health never said "ok" while the target was dead (after the launcher's
        half-second look)."""
        deadline = started + HEAL_TIMEOUT
        while time.monotonic() < deadline:
            try:
                health = await http.get("/health", timeout=5)
                body, code = health.json(), health.status_code
            except (httpx.TransportError, ValueError):
                body, code = {}, 0
            new_pid = self.pid_of(target)
            replaced = stopped or (new_pid is not None and new_pid != pid)
            if code == 200 and body.get("status") == "ok":
                if replaced:
                    return time.monotonic() - started
                # /health does not watch the trainer (no request needs it to answer)
                if not stopped and time.monotonic() - started > 2.0 and target != "trainer":
                    self.untruthful.append(f"/health ok {time.monotonic() - started:.1f} s after {target} died")
            await asyncio.sleep(0.2)
        return None

    # ---- the end ----

    async def settle(self, http: httpx.AsyncClient, timeout: float) -> dict[str, int]:
        """Wait for every accepted job to end; count how each ended."""
        ended: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(ended) < len(self.jobs):
            for job_id in [j for j in self.jobs if j not in ended]:
                path = f"/v1/batches/{job_id}" if self.jobs[job_id] == "batch" else f"/v1/jobs/{job_id}"
                with contextlib.suppress(httpx.TransportError):
                    response = await http.get(path)
                    if response.status_code == 200:
                        body = response.json()
                        state = body.get("state") or body.get("status")
                        if state in ("succeeded", "completed", "failed", "cancelled", "expired"):
                            ended[job_id] = body
            await asyncio.sleep(1)
        outcome = collections.Counter(str(b.get("state") or b.get("status")) for b in ended.values())
        retried = sum(1 for b in ended.values() if (b.get("attempt") or 1) > 1)
        lost = len(self.jobs) - len(ended)
        with_callback = [j for j in ended if self.jobs[j] != "batch"]
        return {
            "accepted": len(self.jobs),
            "finished": len(ended),
            "succeeded": outcome.get("succeeded", 0) + outcome.get("completed", 0),
            "failed": outcome.get("failed", 0),
            "lost": lost,
            "retried (attempt > 1)": retried,
            "callbacks expected": len(with_callback),
            "callbacks exactly once": sum(1 for j in with_callback if self.callbacks[j] == 1),
            "callbacks missing": sum(1 for j in with_callback if self.callbacks[j] == 0),
            "callbacks twice or more": sum(1 for j in with_callback if self.callbacks[j] > 1),
        }


async def receiver(callbacks: collections.Counter[str]) -> tuple[asyncio.Server, str]:
    """A callback receiver on 127.0.0.1: counts each job's deliveries (X-LLMMesh-Job-Id)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:])
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
            if job_id := headers.get("x-llmmesh-job-id"):
                callbacks[job_id] += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"


def mesh_env(data_dir: Path) -> tuple[dict[str, str], int]:
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith("LLMMESH_") and k not in ("DATABASE_URL", "NATS_URL")
    }
    http_port = free_port()
    return {
        **inherited,
        "LLMMESH_GATEWAY_PORT": str(http_port),
        "LLMMESH_INFERENCE_PORT": str(free_port()),
        "LLMMESH_EMBEDDINGS_PORT": str(free_port()),
        "LLMMESH_SCHEDULER_PORT": str(free_port()),
        "LLMMESH_TRAINER_PORT": str(free_port()),
        **{f"LLMMESH_{name}_METRICS_PORT": "0" for name in ("INFERENCE", "EMBEDDINGS", "SCHEDULER", "TRAINER")},
        "LLMMESH_INFERENCE_DATA_DIR": str(data_dir),
        "LLMMESH_INFERENCE_PRELOAD_DEFAULT_MODEL": "false",
        "BACKGROUND_MODEL_NAME": "mock",  # chat jobs run on the mock model: the soak is about faults
        "LLMMESH_SCHEDULER_CALLBACK_ALLOWED_NETWORKS": '["127.0.0.1/32"]',
    }, http_port


async def run(minutes: float, seed: int, interval: tuple[float, float], training: bool = True) -> dict[str, Any]:
    rng = random.Random(seed)
    callbacks: collections.Counter[str] = collections.Counter()
    hook, callback_url = await receiver(callbacks)
    with tempfile.TemporaryDirectory(prefix="llmmesh-chaos-") as directory:
        data_dir = Path(directory) / "data"
        env, http_port = mesh_env(data_dir)
        launcher = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services", env=env, stdout=asyncio.subprocess.PIPE, start_new_session=True
        )
        try:
            async with asyncio.timeout(300):
                while b"LLM Mesh is up" not in (line := await launcher.stdout.readline()):  # type: ignore[union-attr]
                    if not line:
                        raise RuntimeError("the launcher exited before the mesh was up")
            asyncio.create_task(_drain(launcher.stdout))  # type: ignore[arg-type]
            url = f"http://127.0.0.1:{http_port}"
            soak = Soak(url, data_dir / "supervisor.json", callback_url, rng, callbacks=callbacks)
            until = time.monotonic() + minutes * 60
            async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as http:
                await asyncio.gather(
                    soak.chat_loop(http, until),
                    soak.chat_loop(http, until),
                    soak.embeddings_loop(http, until),
                    soak.jobs_loop(http, until),
                    soak.batch_and_training(http, training),
                    soak.killer(http, until, interval),
                )
                jobs = await soak.settle(http, timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launcher.pid, signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(90):
                    await launcher.wait()
            if launcher.returncode is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                await launcher.wait()
            hook.close()
    tally = soak.tally
    return {
        "minutes": minutes,
        "seed": seed,
        "kills": dict(soak.kills),
        "kills_total": sum(soak.kills.values()),
        "http": {
            "sent": tally.sent,
            "succeeded": tally.succeeded,
            "503 or gateway down (expected)": tally.unavailable,
            "failed otherwise": tally.failed,
            "hung": tally.hung,
            "first failures": tally.failures,
        },
        "jobs": jobs,
        "longest recovery seconds": {k: round(max(v), 1) for k, v in soak.recoveries.items()},
        "health untruthful": soak.untruthful,
    }


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", type=float, nargs=2, default=(15.0, 30.0), help="seconds between kills (range)")
    parser.add_argument("--json", type=Path, default=Path(".data/chaos.json"))
    parser.add_argument("--no-training", action="store_true", help="leave out the adapter training")
    args = parser.parse_args()
    report = asyncio.run(run(args.minutes, args.seed, tuple(args.every), training=not args.no_training))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    raise SystemExit(0 if healthy(report) else 1)


def healthy(report: dict[str, Any]) -> bool:
    """What the soak must show: no unexpected failure, no hang, nothing lost, one callback per
    finished job, /health truthful."""
    return (
        report["http"]["failed otherwise"] == 0
        and report["http"]["hung"] == 0
        and report["jobs"]["lost"] == 0
        and report["jobs"]["callbacks exactly once"] == report["jobs"]["callbacks expected"]
        and not report["health untruthful"]
    )


if __name__ == "__main__":
    main()
