"""Starting mesh services for a benchmark, each in its own process as in a deployment, and
metering them."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx

from services.common.grpc_client import open_channel

# One token per benchmark run, shared by the services it starts and its own gRPC clients.
INTERNAL_TOKEN = secrets.token_urlsafe(32)

Meters = dict[str, Callable[[], float]]  # role -> CPU seconds so far (see cpu_seconds)


def mesh_env(**settings: str) -> dict[str, str]:
    """The environment of a benchmarked service: quiet logs, local-development gateway
    (no API key on loopback), the run's internal token, plus `settings`."""
    return {
        **os.environ,
        "LLMMESH_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "LLMMESH_GATEWAY_ALLOW_ANONYMOUS": "true",
        "LLMMESH_INFERENCE_LOG_LEVEL": "warning",
        "LLMMESH_EMBEDDINGS_LOG_LEVEL": "warning",
        "LLMMESH_GATEWAY_LOG_LEVEL": "warning",
        **settings,
    }


def channel(target: str) -> grpc.aio.Channel:
    return open_channel(target, INTERNAL_TOKEN)


async def answers(http: httpx.AsyncClient, url: str) -> bool:
    """Whether `url` answers 200 now (a readiness probe for wait_ready)."""
    try:
        return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_ready(check: Callable[[], Awaitable[bool]], process: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(300):
        while not await check():
            if process.poll() is not None:
                raise SystemExit("a service exited during startup")
            await asyncio.sleep(0.2)


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process, from /proc (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time (user and system) of a process, or of one of its threads, from /proc (Linux)."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
