"""GGUF LoRA: a PEFT adapter converted for llama.cpp and applied per request, serially and in
the batch engine, where requests with different adapters (or none) share steps correctly."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest_asyncio

from services.inference.api import Chunk, SamplingParams
from services.inference.backends.gguf import GGUFBackend
from services.inference.backends.gguf_lora import convert_peft_to_gguf
from services.inference.generation import GenerationRequest
from tests.conftest import gemma

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
    # No prefix cache: reusing a prefix changes batch shapes and so, slightly, the numerics.
    options = {"n_threads": 2, "n_parallel": 4, "n_engines": 1, "prefix_cache": False}
    backend = GGUFBackend(gemma("gemma-batched", context_length=512, options=options))
    await backend.load()
    await backend.load_adapter("one", random_peft_adapter(Path(tempfile.mkdtemp()) / "one", seed=1))
    await backend.load_adapter("two", random_peft_adapter(Path(tempfile.mkdtemp()) / "two", seed=2))
    yield backend
    await backend.unload()


async def generate(backend: GGUFBackend, adapter: str = "", scale: float = 1.0) -> Chunk:
    """The whole text, with the final chunk's usage."""
    request = GenerationRequest(
        request_id="t",
        prompt="The capital of France is",
        sampling=SamplingParams(max_tokens=8, temperature=0.0),
        adapter=adapter,
        adapter_scale=scale,
    )
    chunks = [chunk async for chunk in backend.generate_stream(request)]
    return Chunk(text="".join(c.text for c in chunks), usage=chunks[-1].usage)


async def test_requests_with_different_adapters_interleave(batched: GGUFBackend) -> None:
    """Sequences with different adapters share each step without sharing weights or KV: run
    together, each answers exactly as it does alone (each is its own decode group)."""
    assert batched.adapters == {"one", "two"}
    alone = [(await generate(batched, a)).text for a in ("", "one", "two")]
    assert len(set(alone)) == 3
    together = await asyncio.gather(*(generate(batched, a) for a in ("", "one", "two")))
    assert [c.text for c in together] == alone


async def test_scale_zero_is_the_base_and_scales_are_kept_apart(batched: GGUFBackend) -> None:
    base = (await generate(batched)).text
    assert (await generate(batched, "one", scale=0.0)).text == base
    half, full = await asyncio.gather(generate(batched, "one", 0.5), generate(batched, "one", 1.0))
    assert full.text == (await generate(batched, "one")).text and half.text != full.text


async def test_the_prefix_cache_never_reuses_kv_built_under_other_weights(batched: GGUFBackend) -> None:
    engine = batched._engines[0]
    engine._prefix_cache = True
    try:
        await generate(batched, "one")
        assert (await generate(batched)).usage.cached_prompt_tokens == 0  # the only warm slot is "one"'s
        assert (await generate(batched)).usage.cached_prompt_tokens > 0  # now a base slot holds it
        assert (await generate(batched, "one", 0.5)).usage.cached_prompt_tokens == 0  # another scale
    finally:
        engine._prefix_cache = False
