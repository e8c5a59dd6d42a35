"""Batch benchmark: how fast a batch job runs, and what it costs interactive traffic.

One inference service (its own process, the embedded Gemma 3 270M with the registry's
batching defaults: n_parallel 4), a scheduler in this process on an embedded nats-server and
PostgreSQL, and batch jobs built as the gateway builds them (chat items in the file store).

1. rows/s: a batch alone, start to finish.
2. interactive TTFT: sequential streamed chats, alone, then while a batch runs (its items are
   low priority: decoding pauses them while an interactive request runs), then while the same
   load runs at normal priority (what a batch that did not yield would cost), as ratios.

    python -m bench.batch [--rows 32] [--tokens 32] [--interactive 12] [--output .data/bench/batch.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from bench.chat import MODEL
from bench.fleet import Node
from bench.mesh import INTERNAL_TOKEN, channel
from llmmesh.inference.v1 import inference_service_pb2 as inference_pb
from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from services.common.embedded_nats import EmbeddedNats
from services.common.files import FileSettings, FileStore
from services.inference.api import ChatMessage, ChatRequest, Role, SamplingParams
from services.inference.client import InferenceClient
from services.scheduler.client import JobState, JobType, SchedulerClient
from services.scheduler.config import SchedulerSettings
from services.scheduler.server import SchedulerServer


def interactive_request(index: int, tokens: int = 16) -> ChatRequest:
    return ChatRequest(
        MODEL,
        (ChatMessage(Role.USER, f"Tell me one fact about the number {index}."),),
        sampling=SamplingParams(max_tokens=tokens, temperature=0),
    )


def batch_request(files: FileStore, rows: int, tokens: int) -> pb.JobRequest:
    name = f"batch_{uuid.uuid4().hex}"
    items = []
    for index in range(rows):
        message = inference_pb.ChatMessage(role=inference_pb.ROLE_USER)
        message.content.add(text=f"Write a short story about the number {index}.")
        sampling = inference_pb.SamplingParams(max_tokens=tokens, temperature=0)
        chat = inference_pb.ChatRequest(model=MODEL, messages=[message], sampling=sampling)
        items.append(pb.BatchItem(custom_id=f"row-{index}", chat=chat))
    files.put_object(f"{name}.items", "".join(json_format.MessageToJson(i, indent=None) + "\n" for i in items).encode())
    batch = pb.BatchJobRequest(
        items_object=f"{name}.items", results_object=f"{name}.results", item_count=rows, endpoint="/v1/chat/completions"
    )
    return pb.JobRequest(batch=batch)


async def ttfts(client: InferenceClient, count: int) -> list[float]:
    """Sequential streamed chats; seconds from the call to the first text of each."""
    found = []
    for index in range(count):
        started = time.perf_counter()
        events = await client.stream_chat([interactive_request(index)])
        async for event in events:
            if event.chunk.text:
                found.append(time.perf_counter() - started)
                break
        await events.aclose()  # type: ignore[attr-defined]
    return found


async def until_running(scheduler: SchedulerClient, job_id: str) -> None:
    async with asyncio.timeout(120):
        while (await scheduler.get(job_id, "")).state is not JobState.RUNNING:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # its first items are decoding


async def plain_load(client: InferenceClient, stop: asyncio.Event, tokens: int) -> None:
    """Two streams at a time at normal priority: the same load as the batch, not yielding."""

    async def one() -> None:
        index = 0
        while not stop.is_set():
            await client.chat([interactive_request(1000 + index, tokens)])
            index += 1

    await asyncio.gather(one(), one())


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": 1000 * statistics.median(values), "mean_ms": 1000 * statistics.fmean(values)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="llmmesh-bench-batch-"))
    import pgserver

    postgres = pgserver.get_server(root / "postgres", cleanup_mode="stop")
    nats = EmbeddedNats(root / "nats", user="scheduler", password=secrets.token_urlsafe(32))
    nats.start()
    node = Node(root / "inference", None, None)
    files_settings = FileSettings(dir=root / "files")
    files = FileStore(files_settings)
    try:
        await node.start()
        settings = SchedulerSettings(
            port=0,
            nats_url=nats.url,
            database_url=postgres.get_uri(),
            inference_target=f"127.0.0.1:{node.port}",
            trainer_target="",
            internal_token=INTERNAL_TOKEN,  # type: ignore[arg-type]
            files=files_settings,
            callback_secret=secrets.token_urlsafe(32),  # type: ignore[arg-type]
            log_level="warning",
        )
        scheduler_server = SchedulerServer(settings)
        await scheduler_server.start()
        async with channel(f"127.0.0.1:{scheduler_server.port}") as jobs, channel(f"127.0.0.1:{node.port}") as chats:
            scheduler, client = SchedulerClient(jobs, 600), InferenceClient(chats, 600)
            await ttfts(client, 2)  # warm-up
            alone = await ttfts(client, args.interactive)

            started = time.perf_counter()
            job, _ = await scheduler.submit(JobType.BATCH, batch_request(files, args.rows, args.tokens), owner="")
            async for update in await scheduler.watch(job.job_id, ""):
                final = update
            elapsed = time.perf_counter() - started
            assert final.state is JobState.SUCCEEDED, final.error
            rows_per_second = args.rows / elapsed

            long_batch, _ = await scheduler.submit(JobType.BATCH, batch_request(files, 10_000, args.tokens), owner="")
            await until_running(scheduler, long_batch.job_id)
            during_batch = await ttfts(client, args.interactive)
            await scheduler.cancel(long_batch.job_id, "")

            stop = asyncio.Event()
            load = asyncio.create_task(plain_load(client, stop, args.tokens))
            await asyncio.sleep(1.0)
            during_load = await ttfts(client, args.interactive)
            stop.set()
            await load
        await scheduler_server.stop(grace=1)
    finally:
        node.stop()
        nats.stop()
        postgres.cleanup()
    result = {
        "rows": args.rows,
        "tokens_per_row": args.tokens,
        "batch_seconds": elapsed,
        "rows_per_second": rows_per_second,
        "ttft_alone": summary(alone),
        "ttft_during_batch": summary(during_batch),
        "ttft_during_normal_priority_load": summary(during_load),
    }
    base = result["ttft_alone"]["p50_ms"]
    result["ratio_batch"] = result["ttft_during_batch"]["p50_ms"] / base
    result["ratio_normal_priority"] = result["ttft_during_normal_priority_load"]["p50_ms"] / base
    return result


def report(result: dict[str, Any]) -> None:
    print(f"batch: {result['rows']} rows x {result['tokens_per_row']} tokens in {result['batch_seconds']:.1f} s")
    print(f"       {result['rows_per_second']:.2f} rows/s")
    print("| interactive TTFT | p50 ms | mean ms | p50 vs alone |")
    print("|---|---|---|---|")
    for label, key, ratio in (
        ("alone", "ttft_alone", 1.0),
        ("during a batch (low priority)", "ttft_during_batch", result["ratio_batch"]),
        (
            "during the same load at normal priority",
            "ttft_during_normal_priority_load",
            result["ratio_normal_priority"],
        ),
    ):
        row = result[key]
        print(f"| {label} | {row['p50_ms']:.0f} | {row['mean_ms']:.0f} | {ratio:.2f}x |")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--interactive", type=int, default=12)
    parser.add_argument("--output", type=Path, default=Path(".data/bench/batch.json"))
    args = parser.parse_args()
    result = asyncio.run(main(args))
    report(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli()
