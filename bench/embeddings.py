"""Embeddings throughput: in-process sentence-transformers vs. gRPC Embed vs. the gateway's /v1/embeddings.

The services run as their own processes, as in a deployment. Each request carries
`--per-request` sentences; concurrency is the number of requests in flight. For each run it
reports the batches the service formed (its `llmmesh:embeddings_batch_size` histogram), and
in process, encode() at that batch size too: with c requests of one sentence in flight no batch
can hold more than c, so that is the ceiling a serving path can reach.

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


def in_process(texts: list[str], batch_sizes: list[int]) -> dict[int, float]:
    """Sentences per second of encode() at each batch size."""
    from sentence_transformers import SentenceTransformer

    settings = EmbeddingsSettings()
    model = SentenceTransformer(str(resolve_model_path(settings.model_path)), device="cpu")
    rates = {}
    for batch_size in batch_sizes:
        model.encode(texts[:32], batch_size=batch_size)
        start = time.perf_counter()
        model.encode(texts, batch_size=batch_size)
        rates[batch_size] = len(texts) / (time.perf_counter() - start)
    return rates


async def batches_formed(http: httpx.AsyncClient, metrics_url: str) -> tuple[float, float]:
    """The service's model calls so far: how many, and how many texts in all."""
    text = (await http.get(metrics_url)).text
    values = {}
    for line in text.splitlines():
        for name in ("embeddings_batch_size_count", "embeddings_batch_size_sum"):
            if line.startswith(f"llmmesh:{name} "):
                values[name] = float(line.split()[1])
    return values.get("embeddings_batch_size_count", 0.0), values.get("embeddings_batch_size_sum", 0.0)


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

    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = mesh_env(
        LLMMESH_EMBEDDINGS_PORT=str(grpc_port),
        LLMMESH_EMBEDDINGS_METRICS_PORT=str(metrics_port),
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
                metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
                for concurrency in args.concurrency:
                    for name, call in (("gRPC Embed", via_grpc), ("/v1/embeddings", via_http)):
                        calls, items = await batches_formed(http, metrics_url)
                        rate = await drive(texts, args.per_request, concurrency, call)
                        after_calls, after_items = await batches_formed(http, metrics_url)
                        mean_batch = (after_items - items) / max(after_calls - calls, 1)
                        rows.append((name, concurrency, rate, mean_batch))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)

    ceilings = sorted({min(c * args.per_request, batch_size) for c in args.concurrency} - {batch_size})
    rates = in_process(texts, [batch_size, *ceilings])
    baseline = rates[batch_size]
    print(f"\n{len(texts)} sentences, {args.per_request} per request, all-MiniLM-L6-v2 on CPU ({os.cpu_count()} cores)")
    print(f"{'path':<34} {'c':>3} {'sentences/s':>12} {'vs batch 32':>11} {'mean batch':>10} {'vs ceiling':>10}")
    for size, rate in rates.items():
        print(f"{f'in-process encode(batch_size={size})':<34} {'-':>3} {rate:12.1f} {rate / baseline:11.0%}")
    for name, concurrency, rate, mean_batch in rows:
        ceiling = rates.get(min(concurrency * args.per_request, batch_size), baseline)
        shares = f"{rate / baseline:11.0%} {mean_batch:10.1f} {rate / ceiling:10.0%}"
        print(f"{name:<34} {concurrency:>3} {rate:12.1f} {shares}")


if __name__ == "__main__":
    asyncio.run(main())
