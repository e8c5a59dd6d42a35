"""Embeddings throughput: in-process sentence-transformers vs. gRPC Embed vs. the gateway's /v1/embeddings.

The services run as their own processes, as in a deployment. Each request carries
`--per-request` sentences; concurrency is the number of requests in flight.

    python -m bench.embeddings [--sentences 512] [--per-request 1] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.mesh import channel, mesh_env
from services.common.model_files import resolve_model_path
from services.embeddings.client import EmbeddingsClient, EmbedRequest
from services.embeddings.config import EmbeddingsSettings

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()


def sentences(count: int) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8 + i % 9)) + f" #{i}" for i in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_process(texts: list[str], batch_size: int) -> float:
    from sentence_transformers import SentenceTransformer

    settings = EmbeddingsSettings()
    model = SentenceTransformer(str(resolve_model_path(settings.model_path)), device="cpu")
    model.encode(texts[:32], batch_size=batch_size)
    start = time.perf_counter()
    model.encode(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - start)


async def drive(
    texts: list[str], per_request: int, concurrency: int, call: Callable[[list[str]], Awaitable[None]]
) -> float:
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)

    async def worker() -> None:
        while not queue.empty():
            await call(queue.get_nowait())

    await call(chunks[0])  # warm-up
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(texts) / (time.perf_counter() - start)


async def wait_ready(check: Callable[[], Awaitable[bool]], process: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(300):
        while not await check():
            if process.poll() is not None:
                raise SystemExit("a service exited during startup")
            await asyncio.sleep(0.2)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--per-request", type=int, default=1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    texts = sentences(args.sentences)
    batch_size = EmbeddingsSettings().max_batch_size

    grpc_port, http_port = free_port(), free_port()
    env = mesh_env(
        LLMMESH_EMBEDDINGS_PORT=str(grpc_port),
        LLMMESH_GATEWAY_PORT=str(http_port),
        LLMMESH_GATEWAY_EMBEDDINGS_TARGET=f"127.0.0.1:{grpc_port}",
    )
    processes = [
        subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env) for name in ("embeddings", "gateway")
    ]
    try:
        async with channel(f"127.0.0.1:{grpc_port}") as grpc_channel:
            health = health_pb2_grpc.HealthStub(grpc_channel)

            async def grpc_ready() -> bool:
                try:
                    response = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.aio.AioRpcError:
                    return False
                return response.status == health_pb2.HealthCheckResponse.SERVING

            await wait_ready(grpc_ready, processes[0])
            embeddings = EmbeddingsClient(grpc_channel, timeout=300)

            async def via_grpc(chunk: list[str]) -> None:
                await embeddings.embed(EmbedRequest(model="", texts=tuple(chunk)))  # "": the default model

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as http:

                async def http_ready() -> bool:
                    try:
                        return (await http.get("/health")).json()["services"]["embeddings"] == "SERVING"
                    except (httpx.HTTPError, KeyError, ValueError):
                        return False

                await wait_ready(http_ready, processes[1])

                async def via_http(chunk: list[str]) -> None:
                    response = await http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": chunk})
                    response.raise_for_status()

                rows = []
                for concurrency in args.concurrency:
                    rows.append(
                        ("gRPC Embed", concurrency, await drive(texts, args.per_request, concurrency, via_grpc))
                    )
                    rows.append(
                        ("/v1/embeddings", concurrency, await drive(texts, args.per_request, concurrency, via_http))
                    )
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)

    baseline = in_process(texts, batch_size)
    print(f"\n{len(texts)} sentences, {args.per_request} per request, all-MiniLM-L6-v2 on CPU ({os.cpu_count()} cores)")
    print(f"{'path':<34} {'concurrency':>11} {'sentences/s':>12} {'vs in-process':>14}")
    print(f"{f'in-process encode(batch_size={batch_size})':<34} {'-':>11} {baseline:12.1f} {'100%':>14}")
    for name, concurrency, rate in rows:
        print(f"{name:<34} {concurrency:>11} {rate:12.1f} {rate / baseline:14.0%}")


if __name__ == "__main__":
    asyncio.run(main())
