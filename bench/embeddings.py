"""Embeddings throughput: in-process sentence-transformers vs. gRPC Embed vs. the gateway's /v1/embeddings.

The services run as their own processes, as in a deployment. Each request carries
`--per-request` sentences; concurrency is the number of requests in flight. For each run it
reports the batches the service formed (its `llmmesh:embeddings_batch_size` histogram). Before
each level, in this process, encode() runs at that batch size: with c requests of one sentence
in flight no batch can hold more than c, so that is the ceiling a serving path can reach, and
each path's share of it is taken in the same turn (the machine drifts).

It also reports the CPU milliseconds each process spends per sentence (the bench client, the
gateway, the embeddings service's event loop and its model threads). On a machine whose cores
the client and the services share, a path cannot run faster than the cores divided by its CPU
per sentence: the "CPU bound" column, set beside the in-process ceiling.

    python -m bench.embeddings [--sentences 512] [--per-request 1] [--concurrency 1 8] [--repetitions 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.mesh import Meters, channel, cpu_seconds, free_port, mesh_env, wait_ready
from services.common.model_files import resolve_model_path
from services.embeddings.client import EmbeddingsClient, EmbedRequest
from services.embeddings.config import EmbeddingsSettings

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()


def sentences(count: int) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8 + i % 9)) + f" #{i}" for i in range(count)]


def load_model() -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(resolve_model_path(EmbeddingsSettings().model_path)), device="cpu")
    model.encode(["warm up"])
    return model


def in_process(model: Any, texts: list[str], batch_size: int) -> tuple[float, dict[str, float]]:
    """Sentences per second of the model calls a server makes for `batch_size` clients, back to
    back, and their CPU milliseconds per sentence. One encode() call per batch, in arrival order:
    encode(texts, batch_size) would first sort all 512 texts by length, and batches of equal
    lengths, which no server can form, pad less (measured: 6.1 ms of CPU a sentence, not 7.5)."""
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    model.encode(texts[:32], batch_size=batch_size)
    start, cpu = time.perf_counter(), cpu_seconds(os.getpid())
    for batch in batches:
        model.encode(batch, batch_size=batch_size)
    used_ms = (cpu_seconds(os.getpid()) - cpu) * 1000
    return len(texts) / (time.perf_counter() - start), {"client": used_ms / len(texts)}


@dataclass
class Runs:
    """One path at one concurrency, a value per repetition."""

    rates: list[float] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)  # of the in-process ceiling measured just before
    batches: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    def cpu_ms(self) -> dict[str, float]:
        """Median CPU milliseconds per sentence by role."""
        return {role: statistics.median(run[role] for run in self.cpu) for role in self.cpu[0]}


def service_meters(gateway: int, embeddings: int) -> Meters:
    """CPU seconds so far by role. The embeddings service's main thread runs its event loop
    (gRPC, the micro-batcher); its other threads are the model's (torch) and gRPC's own."""
    return {
        "client": lambda: cpu_seconds(os.getpid()),
        "gateway": lambda: cpu_seconds(gateway),
        "service loop": lambda: cpu_seconds(embeddings, embeddings),
        "service threads": lambda: cpu_seconds(embeddings) - cpu_seconds(embeddings, embeddings),
    }


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
    texts: list[str], per_request: int, concurrency: int, call: Callable[[list[str]], Awaitable[None]], meters: Meters
) -> tuple[float, dict[str, float]]:
    """Sentences per second, and CPU milliseconds per sentence by role."""
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)

    async def worker() -> None:
        while not queue.empty():
            await call(queue.get_nowait())

    await call(chunks[0])  # warm-up
    start, before = time.perf_counter(), {role: meter() for role, meter in meters.items()}
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    used = {role: (meter() - before[role]) * 1000 / len(texts) for role, meter in meters.items()}
    return len(texts) / elapsed, used


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--per-request", type=int, default=1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repetitions", type=int, default=2)
    args = parser.parse_args()
    texts = sentences(args.sentences)
    batch_size = EmbeddingsSettings().max_batch_size
    model = load_model()
    runs: dict[tuple[str, int], Runs] = {}

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

                meters = service_meters(processes[1].pid, processes[0].pid)
                metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
                for _ in range(args.repetitions):  # in turns, so that the machine's drift hits every path
                    for concurrency in args.concurrency:
                        size = min(concurrency * args.per_request, batch_size)
                        ceiling, used = in_process(model, texts, size)
                        runs.setdefault(("in-process encode", size), Runs()).rates.append(ceiling)
                        runs[("in-process encode", size)].cpu.append(used)
                        for name, call in (("gRPC Embed", via_grpc), ("/v1/embeddings", via_http)):
                            calls, items = await batches_formed(http, metrics_url)
                            rate, used = await drive(texts, args.per_request, concurrency, call, meters)
                            after_calls, after_items = await batches_formed(http, metrics_url)
                            run = runs.setdefault((name, concurrency), Runs())
                            run.rates.append(rate)
                            run.shares.append(rate / ceiling)
                            run.batches.append((after_items - items) / max(after_calls - calls, 1))
                            run.cpu.append(used)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    print(report(runs, len(texts), args.per_request, batch_size))


def report(runs: dict[tuple[str, int], Runs], sentences: int, per_request: int, batch_size: int) -> str:
    """Each path against the in-process ceiling of its run, and what the cores allow at its CPU
    per sentence (all the processes share them)."""
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"{sentences} sentences, {per_request} per request, all-MiniLM-L6-v2 on CPU ({cores} cores)",
        f"{'path':<34} {'c':>3} {'sentences/s':>12} {'vs ceiling':>14} {'mean batch':>10} "
        f"{'CPU ms/sentence':>15} {'CPU bound':>9}",
    ]
    for (name, concurrency), run in runs.items():
        rate, cpu_ms = statistics.median(run.rates), sum(run.cpu_ms().values())
        if not run.shares:  # an in-process ceiling; its `c` is the batch size
            lines.append(f"{name:<34} {concurrency:>3} {rate:12.1f} {'':>14} {'':>10} {cpu_ms:15.2f}")
            continue
        shares = ", ".join(f"{share:.0%}" for share in run.shares)
        ceiling = statistics.median(runs[("in-process encode", min(concurrency * per_request, batch_size))].rates)
        bound = cores * 1000 / cpu_ms / ceiling  # the share of the ceiling the cores allow
        lines.append(
            f"{name:<34} {concurrency:>3} {rate:12.1f} {shares:>14} {statistics.median(run.batches):10.1f} "
            f"{cpu_ms:15.2f} {bound:9.0%}"
        )
    lines.append("\nCPU ms per sentence by process (median):")
    roles = ("client", "gateway", "service loop", "service threads")
    lines.append(f"{'path':<34} {'c':>3} " + " ".join(f"{role:>15}" for role in roles))
    for (name, concurrency), run in runs.items():
        if run.shares:
            used = run.cpu_ms()
            lines.append(f"{name:<34} {concurrency:>3} " + " ".join(f"{used[role]:15.2f}" for role in roles))
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(main())
