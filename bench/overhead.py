"""The gateway's own first-token cost: the `mock` model (which computes nothing) through the
gateway's SSE and straight over gRPC, and a bare Starlette SSE endpoint under the same uvicorn
(the floor any Python HTTP server on this machine costs), in turns, at concurrency 1.

The gateway and the gRPC client reach the same inference process, so the difference of their
TTFT medians is what the gateway adds before a client sees its first token: the HTTP stack
(the floor's share) plus the gateway's own work (auth, admission, validation, the SSE framing).
The gateway's `x-overhead-ms` header (its time minus the time it waited for inference) and
CPU milliseconds per request by process are reported beside it.

    python -m bench.overhead [--requests 64] [--repetitions 4] [--tokens 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from bench.chat import NO_COMPUTE, Call, Sample, grpc_call, mesh_meters, prompt, run
from bench.mesh import answers, channel, free_port, mesh_env, wait_ready
from services.inference.client import InferenceClient

SSE, GRPC, FLOOR = "gateway SSE, mock", "gRPC, mock", "bare Starlette SSE"


def sse_first_token(http: httpx.AsyncClient, url: str, tokens: int, overheads: list[float] | None = None) -> Call:
    """A streamed completion on `mock`, timed to its first text event; keeps x-overhead-ms."""

    async def call(index: int) -> Sample:
        body = {"model": NO_COMPUTE, "prompt": prompt(index), "max_tokens": tokens, "stream": True}
        sample = Sample(time.perf_counter())
        async with http.stream("POST", url, json=body) as response:
            response.raise_for_status()
            if overheads is not None:
                overheads.append(float(response.headers.get("x-overhead-ms", "nan")))
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"text":"' in line and '"text":""' not in line:
                    sample.token_times.append(time.perf_counter())
                    sample.output_tokens += 1
        return sample

    return call


def floor_app() -> Any:
    """One SSE endpoint that reads the JSON body and streams `max_tokens` completion chunks."""
    import json

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def completions(request: Request) -> StreamingResponse:
        body = await request.json()

        async def events() -> AsyncIterator[str]:
            for index in range(body["max_tokens"]):
                chunk = {"object": "text_completion", "choices": [{"index": 0, "text": f" w{index}"}]}
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]), Route("/health", health)])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64, help="requests per repetition")
    parser.add_argument("--repetitions", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    grpc_port, http_port, floor_port = free_port(), free_port(), free_port()
    env = mesh_env(
        LLMMESH_INFERENCE_PORT=str(grpc_port),
        LLMMESH_GATEWAY_PORT=str(http_port),
        LLMMESH_GATEWAY_INFERENCE_TARGET=f"127.0.0.1:{grpc_port}",
        LLMMESH_INFERENCE_PRELOAD_DEFAULT_MODEL="false",
    )
    floor_command = ["uvicorn", "--factory", "bench.overhead:floor_app", "--port", str(floor_port)]
    inference = subprocess.Popen([sys.executable, "-m", "services.inference"], env=env)
    gateway = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env)
    floor = subprocess.Popen([sys.executable, "-m", *floor_command, "--log-level", "warning"], env=env)
    overheads: list[float] = []
    try:
        async with httpx.AsyncClient(timeout=60) as http, channel(f"127.0.0.1:{grpc_port}") as grpc_channel:
            await wait_ready(lambda: answers(http, f"http://127.0.0.1:{http_port}/health/ready"), gateway)
            await wait_ready(lambda: answers(http, f"http://127.0.0.1:{floor_port}/health"), floor)
            calls = {
                SSE: sse_first_token(http, f"http://127.0.0.1:{http_port}/v1/completions", args.tokens, overheads),
                GRPC: grpc_call(InferenceClient(grpc_channel, timeout=60), args.tokens, NO_COMPUTE),
                FLOOR: sse_first_token(http, f"http://127.0.0.1:{floor_port}/v1/completions", args.tokens),
            }
            meters = dict.fromkeys((SSE, GRPC), mesh_meters(gateway.pid, inference.pid))
            rows = await run(calls, args.requests, 1, args.repetitions, meters)
    finally:
        for process in (gateway, inference, floor):
            process.terminate()
            process.wait(timeout=30)
    print(f"\n`mock`, c=1, {args.tokens} tokens, {args.requests} x {args.repetitions} requests a path, in turns:")
    print(f"{'path':<20} {'TTFT median ms':>15} {'TTFT p99 ms':>12}   CPU ms per request")
    for name, row in rows.items():
        tokens_per_request = row["output_throughput"] / row["request_throughput"]
        cpu = ", ".join(f"{role} {used * tokens_per_request:.2f}" for role, used in row["cpu_ms_per_token"].items())
        print(f"{name:<20} {row['ttft_ms']['median']:15.2f} {row['ttft_ms']['p99']:12.2f}   {cpu}")
    sse, direct, bare = (rows[name]["ttft_ms"]["median"] for name in (SSE, GRPC, FLOOR))
    print(f"the gateway's first-token cost (SSE - gRPC): {sse - direct:.2f} ms; the bare HTTP floor {bare:.2f}")
    measured = [value for value in overheads[1:] if value == value]  # after the warm-up; NaN: no header
    print(f"the gateway's own x-overhead-ms: median {statistics.median(measured):.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
