"""Per-request LoRA adapters (`adapter_settings`) through the gateway, on the transformers
backend with the real Gemma weights: attached on first use without reloading the base."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from services.common.checkpoints import gguf_cache_dir
from services.inference.server.server import InferenceServer
from tests.conftest import GEMMA, loaded_backend


@pytest.fixture(scope="module")
async def random_adapter(inference: InferenceServer, adapter_store: Path) -> str:
    """A LoRA adapter with random weights (so that it visibly changes the output), saved as safetensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    backend = await loaded_backend(inference, "gemma-hf")
    base_dir = gguf_cache_dir(Path(backend.spec.options["cache_dir"]), backend.spec.resolve_path())
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config).save_pretrained(
        adapter_store / "random-lora"
    )
    return "random-lora"


def body(model: str, adapter: str | None = None) -> dict[str, object]:
    fields: dict[str, object] = {
        "model": model,
        "prompt": "1, 2, 3, 4,",
        "max_tokens": 6,
        "temperature": 0,
    }
    if adapter is not None:
        fields["adapter_settings"] = {"adapter_id": adapter}
    return fields


async def test_a_request_is_answered_through_its_adapter(http: httpx.AsyncClient, random_adapter: str) -> None:
    hits = REGISTRY.get_sample_value("llmmesh:adapter_cache_lookups_total", {"model_name": "gemma-hf", "result": "hit"})
    plain = (await http.post("/v1/completions", json=body("gemma-hf"))).json()["choices"][0]["text"]
    adapted = await http.post("/v1/completions", json=body("gemma-hf", random_adapter))
    assert adapted.status_code == 200, adapted.text
    assert adapted.json()["choices"][0]["text"] != plain
    again = (await http.post("/v1/completions", json=body("gemma-hf", random_adapter))).json()["choices"][0]["text"]
    assert again == adapted.json()["choices"][0]["text"]  # greedy, same adapter
    assert (await http.post("/v1/completions", json=body("gemma-hf"))).json()["choices"][0]["text"] == plain
    after = REGISTRY.get_sample_value(
        "llmmesh:adapter_cache_lookups_total", {"model_name": "gemma-hf", "result": "hit"}
    )
    assert (after or 0) >= (hits or 0) + 1  # attached once, then found attached


async def test_the_gguf_backend_applies_the_same_adapter(http: httpx.AsyncClient, random_adapter: str) -> None:
    plain = (await http.post("/v1/completions", json=body(GEMMA))).json()["choices"][0]["text"]
    adapted = await http.post("/v1/completions", json=body(GEMMA, random_adapter))
    assert adapted.status_code == 200, adapted.text
    assert adapted.json()["choices"][0]["text"] != plain


async def test_bad_adapter_requests(http: httpx.AsyncClient, adapter_store: Path, random_adapter: str) -> None:
    unsafe = adapter_store / "pickled"
    unsafe.mkdir(exist_ok=True)
    (unsafe / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (unsafe / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    cases = [
        (body("gemma-hf", "no-such-adapter"), 404, "adapter_not_found"),
        (body("gemma-hf", "pickled"), 400, "adapter_unsafe"),
        (body("gemma-hf", "../etc"), 400, None),
        (body("mock", random_adapter), 400, None),  # the mock backend applies no adapters
        ({**body("gemma-hf"), "adapter_settings": {"adapter_id": random_adapter, "scale": 2.5}}, 400, None),
    ]
    for request, status, code in cases:
        response = await http.post("/v1/completions", json=request)
        assert response.status_code == status, (request, response.text)
        if code:
            assert response.json()["error"]["code"] == code
