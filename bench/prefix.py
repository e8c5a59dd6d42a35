"""Prefix-aware placement across engines: requests from two applications, each with its own
~1,300-token system prompt, alternating, at c=4, on one inference service with the registry's
batching defaults (n_parallel 4 on two engines here). With placement, a request goes to an
engine whose free slot caches its application's prompt (when that engine is at most one
request busier and has a free slot); without, to the least busy engine, whose free slot may
hold the other application's prompt, which then is evaluated again.

    python -m bench.prefix [--requests 24] [--concurrency 4] [--output .data/bench/prefix.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.chat import MODEL
from bench.fleet import Node
from bench.mesh import channel
from services.inference.api import ChatMessage, ChatRequest, Role, SamplingParams
from services.inference.client import InferenceClient

APPS = tuple(
    " ".join(f"{app} rule {i}: answer politely, cite section {i}, never reveal internal notes." for i in range(60))
    for app in ("Billing", "Support")
)


async def one(client: InferenceClient, index: int) -> tuple[float, int, int]:
    """TTFT, prompt tokens and prompt tokens served from the cache, of one streamed request."""
    system = APPS[index % 2]
    messages = (ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, f"Question {index}: what is {index} + 1?"))
    request = ChatRequest(MODEL, messages, sampling=SamplingParams(max_tokens=8, temperature=0))
    started, ttft = time.perf_counter(), 0.0
    events = await client.stream_chat([request])
    usage = None
    async for event in events:
        if event.chunk.text and not ttft:
            ttft = time.perf_counter() - started
        usage = event.chunk.usage or usage
    assert usage is not None
    return ttft or time.perf_counter() - started, usage.prompt_tokens, usage.cached_prompt_tokens


async def workload(port: int, requests: int, concurrency: int) -> dict[str, Any]:
    async with channel(f"127.0.0.1:{port}") as chats:
        client = InferenceClient(chats, 600)
        for index in range(concurrency):  # warm-up, one at a time: the caches hold both prompts
            await one(client, -index)
        slots = asyncio.Semaphore(concurrency)

        async def limited(index: int) -> tuple[float, int, int]:
            async with slots:
                return await one(client, index)

        results = await asyncio.gather(*(limited(i) for i in range(requests)))
    ttfts = [r[0] for r in results]
    return {
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_mean_ms": 1000 * statistics.fmean(ttfts),
        "prompt_tokens": results[0][1],
        "cached_share": sum(r[2] for r in results) / sum(r[1] for r in results),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="llmmesh-bench-prefix-"))
    rows = {}
    for label, placement in (("least busy engine", False), ("prefix-aware placement", True)):
        node = Node(root / label.replace(" ", "-"), None, None, {"prefix_placement": placement})
        try:
            await node.start()
            rows[label] = await workload(node.port, args.requests, args.concurrency)
        finally:
            node.stop()
    rows["ratio"] = rows["least busy engine"]["ttft_p50_ms"] / rows["prefix-aware placement"]["ttft_p50_ms"]
    return rows


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--output", type=Path, default=Path(".data/bench/prefix.json"))
    args = parser.parse_args()
    rows = asyncio.run(main(args))
    tokens = rows["least busy engine"]["prompt_tokens"]
    print(f"two applications' system prompts, {tokens} prompt tokens a request, c={args.concurrency}")
    print("| placement | TTFT p50 ms | TTFT mean ms | prompt tokens from cache |")
    print("|---|---|---|---|")
    for label in ("least busy engine", "prefix-aware placement"):
        row = rows[label]
        print(f"| {label} | {row['ttft_p50_ms']:.0f} | {row['ttft_mean_ms']:.0f} | {100 * row['cached_share']:.0f}% |")
    print(f"TTFT p50: {rows['ratio']:.2f}x faster with placement")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    cli()
