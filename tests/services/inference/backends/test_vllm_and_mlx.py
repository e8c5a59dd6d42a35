"""vLLM and MLX cannot run on this CPU-only Linux machine: their pure mapping is tested here,
and choosing them fails at load with a clear message, not an ImportError traceback."""

import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.common.registry import ModelSpec
from services.inference.api import SamplingParams
from services.inference.backends.mlx_backend import MlxBackend, platform_problem, sampler_arguments, shared_prefix
from services.inference.backends.vllm_backend import (
    VllmBackend,
    VllmEnvironment,
    VllmOptions,
    engine_arguments,
    sampling_arguments,
)


def test_vllm_sampling_arguments() -> None:
    sampling = SamplingParams(temperature=0.0, top_k=0, max_tokens=9, seed=3, repeat_penalty=1.1, stop=("x",))
    assert sampling_arguments(sampling, sampling.stop + ("<end_of_turn>",)) == {
        "temperature": 0.0,
        "top_k": 0,
        "max_tokens": 9,
        "seed": 3,
        "repetition_penalty": 1.1,
        "stop": ["x", "<end_of_turn>"],
    }


def test_vllm_engine_arguments_follow_jarvis_variables(monkeypatch) -> None:
    monkeypatch.setenv("JARVIS_VLLM_TENSOR_PARALLEL_SIZE", "2")
    monkeypatch.setenv("JARVIS_VLLM_GPU_MEMORY_UTILIZATION", "0.8")
    monkeypatch.setenv("JARVIS_VLLM_MAX_LORAS", "4")
    monkeypatch.setenv("JARVIS_VLLM_MAX_LORA_RANK", "32")
    arguments = engine_arguments("/models/qwen", 4096, VllmOptions(), VllmEnvironment())
    assert arguments["tensor_parallel_size"] == 2 and arguments["gpu_memory_utilization"] == 0.8
    assert arguments["max_loras"] == 4 and arguments["max_lora_rank"] == 32 and arguments["max_model_len"] == 4096
    assert (
        engine_arguments("/m/x.gguf", 2048, VllmOptions(tokenizer="/m/tok"), VllmEnvironment())["tokenizer"] == "/m/tok"
    )
    with pytest.raises(Unavailable, match="tokenizer"):
        engine_arguments("/m/x.gguf", 2048, VllmOptions(), VllmEnvironment())


async def test_vllm_fails_clearly_without_vllm_or_a_gpu() -> None:
    with pytest.raises(Unavailable, match="vllm backend needs"):
        await VllmBackend(ModelSpec(name="v", backend="vllm", path="/models/qwen")).load()


def test_mlx_sampler_uses_temp_not_temperature() -> None:
    arguments = sampler_arguments(SamplingParams(temperature=0.2, top_p=0.9))
    assert arguments == {"temp": 0.2, "top_p": 0.9, "min_p": 0.0, "top_k": 0}
    assert "temperature" not in arguments


def test_mlx_prefix_reuse() -> None:
    system = [1, 2, 3, 4]
    assert shared_prefix(system + [5, 6], system + [7, 8, 9]) == 4
    assert shared_prefix([], [1, 2]) == 0
    assert shared_prefix([1, 2, 3], [1, 2, 3]) == 2  # one token is always evaluated again


def test_mlx_platform_check() -> None:
    assert platform_problem("Darwin", "arm64") is None
    assert "Apple silicon" in platform_problem("Linux", "x86_64")


async def test_mlx_fails_clearly_on_linux() -> None:
    with pytest.raises(Unavailable, match="needs macOS on Apple silicon"):
        await MlxBackend(ModelSpec(name="m", backend="mlx", path="/models/mlx")).load()


def test_mlx_json_schemas_are_checked_by_llguidance() -> None:
    MlxBackend.check_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    with pytest.raises(InvalidArgument, match="not"):
        MlxBackend.check_schema({"type": "object", "not": {"required": ["a"]}})
