"""GGUF LoRA: a PEFT adapter converted for llama.cpp and applied per request, serially and in
the batch engine, where requests with different adapters (or none) share steps correctly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from services.inference.backends.gguf import GGUFBackend
from services.inference.backends.gguf_lora import convert_peft_to_gguf
from services.inference.domain import GenerationRequest, SamplingParams
from tests.conftest import gemma

pytestmark = pytest.mark.model

HIDDEN, Q_OUT, KV_OUT, LAYERS, RANK = 640, 1024, 256, 18, 4  # Gemma 3 270M


def random_peft_adapter(directory: Path, seed: int) -> Path:
    """A PEFT LoRA on every layer's q_proj and v_proj, random enough to change greedy output."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(LAYERS):
        for module, out in (("q_proj", Q_OUT), ("v_proj", KV_OUT)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.05, (RANK, HIDDEN)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.05, (out, RANK)).astype(np.float32)
    directory.mkdir(parents=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


def test_the_conversion_keeps_shapes_and_alpha(tmp_path: Path) -> None:
    import gguf

    adapter = random_peft_adapter(tmp_path / "adapter", seed=1)
    converted = convert_peft_to_gguf(adapter, tmp_path / "base.gguf", "gemma3", LAYERS)
    reader = gguf.GGUFReader(converted)
    tensors = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    assert tensors["blk.0.attn_q.weight.lora_a"] == (HIDDEN, RANK)  # ggml order: [in, r]
    assert tensors["blk.17.attn_v.weight.lora_b"] == (RANK, KV_OUT)  # [r, out]
    assert len(tensors) == LAYERS * 4
    assert float(reader.fields["adapter.lora.alpha"].parts[-1][0]) == 8.0
    assert convert_peft_to_gguf(adapter, tmp_path / "base.gguf", "gemma3", LAYERS) == converted  # once


@pytest_asyncio.fixture(scope="module")
async def batched() -> AsyncIterator[GGUFBackend]:
    backend = GGUFBackend(gemma("gemma-batched", context_length=512, options={"n_threads": 2, "n_parallel": 4}))
    await backend.load()
    yield backend
    await backend.unload()


async def text(backend: GGUFBackend, adapter: str = "") -> str:
    request = GenerationRequest(
        request_id="t",
        prompt="The capital of France is",
        sampling=SamplingParams(max_tokens=8, temperature=0.0),
        adapter=adapter,
    )
    return "".join([chunk.text async for chunk in backend.generate_stream(request)])


async def test_requests_with_different_adapters_interleave(batched: GGUFBackend, tmp_path: Path) -> None:
    await batched.load_adapter("one", random_peft_adapter(tmp_path / "one", seed=1))
    await batched.load_adapter("two", random_peft_adapter(tmp_path / "two", seed=2))
    assert batched.adapters == {"one", "two"}
    results = await asyncio.gather(*(text(batched, a) for a in ("", "one", "two", "", "one", "two")))
    base, one, two = results[:3]
    assert results[3:] == [base, one, two]  # each adapter's pair agrees: no leakage between sequences
    assert len({base, one, two}) == 3
    # Alone again: the prefix cache must not hand a slot built under one adapter to another.
    assert await text(batched, "one") == await text(batched, "one") != await text(batched, "")
