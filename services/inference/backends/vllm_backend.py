"""vLLM backend (Linux + NVIDIA GPU), written against vLLM's documented async engine API.

`AsyncLLMEngine.from_engine_args` (vLLM v1's AsyncLLM) batches concurrent requests
itself; each request streams DELTA outputs, may name a LoRA adapter (`LoRARequest`,
many adapters served at once), and is aborted by id when its stream closes.
Install with `pip install -r deploy/requirements/vllm.txt`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import compat
from services.common.chat_templates import ChatTemplate, hf_token_ids
from services.common.errors import FailedPrecondition, Unavailable
from services.inference.api import Chunk, FinishReason, SamplingParams, Usage
from services.inference.backends.base import Backend, BackendOptions
from services.inference.generation import GenerationRequest

log = logging.getLogger(__name__)


class VllmEnvironment(BaseSettings):
    """LLMMESH_VLLM_*; jarvis-llm-proxy's JARVIS_VLLM_* too (services/common/compat.py)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    tensor_parallel_size: int = compat.env("LLMMESH_VLLM_TENSOR_PARALLEL_SIZE", 1, description="GPUs one model spans.")
    gpu_memory_utilization: float = compat.env(
        "LLMMESH_VLLM_GPU_MEMORY_UTILIZATION", 0.9, description="Share of GPU memory vLLM takes."
    )
    max_loras: int = compat.env("LLMMESH_VLLM_MAX_LORAS", 1, description="LoRA adapters in one batch.")
    max_lora_rank: int = compat.env("LLMMESH_VLLM_MAX_LORA_RANK", 64, description="Largest adapter rank served.")


class VllmOptions(BackendOptions):
    """Unset fields take VllmEnvironment's values."""

    tensor_parallel_size: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enable_lora: bool = True
    max_loras: int | None = Field(None, ge=1)
    max_lora_rank: int | None = Field(None, ge=1)
    tokenizer: str | None = Field(None, description="A Hugging Face tokenizer (needed for a GGUF file).")
    dtype: str | None = None


def engine_arguments(model: str, context_length: int, options: VllmOptions, env: VllmEnvironment) -> dict[str, Any]:
    """`AsyncEngineArgs` keyword arguments. A GGUF file needs a tokenizer override (options.tokenizer)."""
    arguments: dict[str, Any] = {
        "model": model,
        "max_model_len": context_length,
        "tensor_parallel_size": options.tensor_parallel_size or env.tensor_parallel_size,
        "gpu_memory_utilization": options.gpu_memory_utilization or env.gpu_memory_utilization,
        "enable_lora": options.enable_lora,
        "max_loras": options.max_loras or env.max_loras,
        "max_lora_rank": options.max_lora_rank or env.max_lora_rank,
        "enable_prefix_caching": True,
    }
    if tokenizer := options.tokenizer:
        arguments["tokenizer"] = tokenizer
    elif model.endswith(".gguf"):
        raise Unavailable(
            f"vLLM needs options.tokenizer (a Hugging Face tokenizer directory) to serve the GGUF file {model}.",
            reason="MODEL_LOAD_FAILED",
        )
    if dtype := options.dtype:
        arguments["dtype"] = dtype
    return arguments


def sampling_arguments(sampling: SamplingParams, stop: tuple[str, ...]) -> dict[str, Any]:
    """`vllm.SamplingParams` keyword arguments. vLLM disables top-k with 0 and greedy-decodes at temperature 0."""
    values = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "repetition_penalty": sampling.repeat_penalty,
    }
    arguments: dict[str, Any] = {key: value for key, value in values.items() if value is not None}
    if stop:
        arguments["stop"] = list(stop)
    return arguments


_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.STOP}


class VllmBackend(Backend):
    Options = VllmOptions
    options: VllmOptions
    supports_adapters: ClassVar[bool] = True
    supports_structured_output: ClassVar[bool] = True  # vLLM's structured outputs (xgrammar/guidance)

    async def load(self) -> None:
        try:
            import torch
            from vllm import AsyncEngineArgs, AsyncLLMEngine
        except ImportError as error:
            raise Unavailable(
                "The vllm backend needs vLLM: pip install -r deploy/requirements/vllm.txt on Linux with an NVIDIA GPU "
                f"({error.name} could not be imported).",
                reason="BACKEND_UNAVAILABLE",
            ) from error
        if not torch.cuda.is_available():
            raise Unavailable("The vllm backend needs a CUDA GPU, and none is visible.", reason="BACKEND_UNAVAILABLE")
        path = self.spec.resolve_path()
        model = str(path) if path.exists() else (self.spec.path or self.spec.name)
        arguments = engine_arguments(model, self.spec.context_length, self.options, VllmEnvironment())
        self._engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**arguments))
        tokenizer = self._tokenizer = await self._engine.get_tokenizer()
        template = self.spec.chat_template or getattr(tokenizer, "chat_template", None) or "chatml"
        self._template = ChatTemplate.named_or_inline(
            template, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or ""
        )
        self._adapters: dict[str, Any] = {}
        self._adapter_ids = itertools.count(1)
        log.info("loaded vLLM model '%s' (%s)", self.spec.name, arguments)

    async def unload(self) -> None:
        self._engine.shutdown()

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    async def check_health(self) -> None:
        await self._engine.check_health()

    async def load_adapter(self, name: str, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        self._adapters[name] = LoRARequest(name, next(self._adapter_ids), str(path))

    async def remove_adapter(self, name: str) -> None:
        adapter = self._adapters.pop(name, None)
        if adapter is not None:
            await self._engine.remove_lora(adapter.lora_int_id)

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        if request.adapter and request.adapter not in self._adapters:
            raise FailedPrecondition(f"Adapter '{request.adapter}' is not loaded.", reason="ADAPTER_NOT_LOADED")
        prompt, stop = request.prompt_for(self._template)
        arguments = sampling_arguments(request.sampling, stop)
        if request.response_format.constrains:
            from vllm.sampling_params import StructuredOutputsParams

            arguments["structured_outputs"] = StructuredOutputsParams(json=request.response_format.json_schema())
        params = VllmSamplingParams(**arguments, output_kind=RequestOutputKind.DELTA)
        lora = self._adapters.get(request.adapter) if request.adapter else None
        generated, prompt_tokens, finish = 0, 0, FinishReason.STOP
        finished = False
        tokens = {"prompt_token_ids": await asyncio.to_thread(hf_token_ids, self._tokenizer, prompt)}
        try:
            async for output in self._engine.generate(tokens, params, request.request_id, lora_request=lora):
                prompt_tokens = len(output.prompt_token_ids or ())
                completion = output.outputs[0]
                generated += len(completion.token_ids)
                self.stats.tokens_generated += len(completion.token_ids)
                if completion.text:
                    yield Chunk(text=completion.text)
                if output.finished:
                    finish = _FINISH.get(completion.finish_reason or "stop", FinishReason.STOP)
                    finished = True
        finally:
            if not finished:  # the client went away: free the engine's slot
                await self._engine.abort(request.request_id)
        yield Chunk(text="", finish_reason=finish, usage=Usage(prompt_tokens, generated))
