"""Hugging Face transformers backend (torch), with PEFT LoRA adapters.

Loads a causal LM from a local directory, or from a .gguf file (transformers
dequantizes it; the result is cached with `save_pretrained` under the cache
directory, so the next load takes seconds instead of a minute). One worker
thread runs `generate`; a streamer on that thread hands text back to the event
loop as it is decoded, and a stopping criterion checks the cancel flag before
every token.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import compat
from services.common.chat_templates import ChatTemplate, Prompt, hf_token_ids
from services.common.checkpoints import dequantized_checkpoint
from services.common.errors import FailedPrecondition, NotFound, Unavailable
from services.inference.api import Chunk, FinishReason, ResponseFormat, SamplingParams, TokenLogprob, Usage
from services.inference.backends import guidance
from services.inference.backends.base import BackendOptions
from services.inference.backends.logprobs import token_logprob
from services.inference.backends.stop_sequences import StopSequenceMatcher
from services.inference.backends.threaded import ThreadedBackend
from services.inference.generation import GenerationRequest
from services.inference.metrics import ADAPTER_LOAD_TIME, ADAPTER_LOOKUPS

log = logging.getLogger(__name__)


class TransformersEnvironment(BaseSettings):
    """Defaults for every transformers model; a registry entry's `options` override them."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    device: str = compat.env("LLMMESH_TRANSFORMERS_DEVICE", "auto", description="auto, cpu, cuda or mps.")
    dtype: str = compat.env(
        "LLMMESH_TRANSFORMERS_DTYPE", "auto", description="torch dtype: auto, float32, float16, bfloat16."
    )
    quantization: str = compat.env("LLMMESH_TRANSFORMERS_QUANTIZATION", "none", description="none, 4bit or 8bit (CUDA)")
    use_quantization: bool = compat.env(
        "LLMMESH_TRANSFORMERS_USE_QUANTIZATION", False, description="Quantize on load (CUDA)."
    )
    cache_dir: Path = compat.env(
        "LLMMESH_TRANSFORMERS_CACHE_DIR", Path(".data/transformers"), description="Dequantized GGUF checkpoints."
    )


def pick_device(requested: str, cuda: bool, mps: bool) -> str:
    if requested != "auto":
        return requested
    return "cuda" if cuda else "mps" if mps else "cpu"


def pick_dtype(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    return "bfloat16" if device == "cuda" else "float32"  # half precision on CPU is slow and lossy


class TransformersOptions(BackendOptions):
    """Unset fields take TransformersEnvironment's values."""

    device: str | None = Field(None, description="auto, cpu, cuda, mps.")
    dtype: str | None = Field(None, description="auto, float32, bfloat16, float16.")
    quantization: Literal["none", "4bit", "8bit"] | None = None
    cache_dir: Path | None = Field(None, description="Where dequantized GGUF checkpoints are kept.")


@functools.cache
def transformers_environment() -> TransformersEnvironment:
    """Parsed once per process: the environment does not change under a running service."""
    return TransformersEnvironment()


class TransformersBackend(ThreadedBackend):
    Options = TransformersOptions
    options: TransformersOptions
    supports_adapters: ClassVar[bool] = True
    supports_adapter_scale: ClassVar[bool] = True
    supports_structured_output: ClassVar[bool] = True
    supports_framed_output: ClassVar[bool] = True  # llguidance; see backends/guidance.py
    supports_logprobs: ClassVar[bool] = True  # recorded by a logits processor at each step

    @classmethod
    def check_schema(cls, schema: dict[str, Any]) -> None:
        guidance.check_schema(schema)

    async def load(self) -> None:
        try:
            import torch  # noqa: F401 - fail here, with a message, where torch is missing
            import transformers  # noqa: F401
        except ImportError as error:
            raise Unavailable(
                f"The transformers backend needs torch and transformers ({error.name} is missing).",
                reason="BACKEND_UNAVAILABLE",
            ) from error
        self._start_worker()
        self._adapters: set[str] = set()
        self._guidance_tokenizer: Any = None
        await self._on_worker(self._load_blocking)

    def _load_blocking(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        env, options = transformers_environment(), self.options
        device = pick_device(options.device or env.device, torch.cuda.is_available(), torch.backends.mps.is_available())
        dtype = getattr(torch, pick_dtype(options.dtype or env.dtype, device))
        source = self.spec.resolve_path()
        if not source.exists():
            raise Unavailable(f"Model path for '{self.spec.name}' not found: {source}", reason="MODEL_LOAD_FAILED")
        load_kwargs: dict[str, Any] = {"dtype": dtype, **self._quantization(options, env, device)}
        if source.suffix == ".gguf":
            source = dequantized_checkpoint(source, options.cache_dir or env.cache_dir, dtype)
        self._tokenizer = AutoTokenizer.from_pretrained(source)
        self._model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
        if "quantization_config" not in load_kwargs:
            self._model.to(device)  # type: ignore[arg-type]
        self._model.eval()
        self._device = device
        template = self.spec.chat_template or getattr(self._tokenizer, "chat_template", None) or "chatml"
        self._template = ChatTemplate.named_or_inline(
            template, bos_token=self._tokenizer.bos_token or "", eos_token=self._tokenizer.eos_token or ""
        )
        # Tokens that end an assistant turn (e.g. Gemma's <end_of_turn>) end generation as EOS does.
        stop_ids = {self._tokenizer.convert_tokens_to_ids(s) for s in self._template.stop}
        unknown = self._tokenizer.unk_token_id
        self._eos_ids = sorted({self._tokenizer.eos_token_id, *stop_ids} - {None, unknown})
        warmup = SamplingParams(max_tokens=1, temperature=0.0)
        self._generate_blocking(Prompt.raw("Hello"), warmup, (), threading.Event(), lambda _: None)
        log.info("loaded transformers model '%s' on %s (%s)", self.spec.name, device, dtype)

    def _json_constraint(self, response_format: ResponseFormat) -> Any:
        """A logits processor that masks every token the schema's grammar does not allow next."""
        import llguidance.hf
        import llguidance.torch
        from transformers import LogitsProcessor

        if self._guidance_tokenizer is None:
            self._guidance_tokenizer = llguidance.hf.from_tokenizer(self._tokenizer)  # type: ignore[arg-type]
        matcher = guidance.matcher(self._guidance_tokenizer, response_format)
        bitmask = llguidance.torch.allocate_token_bitmask(1, self._guidance_tokenizer.vocab_size)

        class JsonConstraint(LogitsProcessor):
            prompt_length: int | None = None

            def __call__(self, input_ids: Any, scores: Any) -> Any:
                if self.prompt_length is None:
                    self.prompt_length = input_ids.shape[1]
                else:  # the token chosen at the previous step
                    matcher.consume_token(int(input_ids[0, -1]))
                llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)
                llguidance.torch.apply_token_bitmask_inplace(scores, bitmask.to(scores.device))
                return scores

        return JsonConstraint()

    def _quantization(self, options: TransformersOptions, env: TransformersEnvironment, device: str) -> dict[str, Any]:
        mode = options.quantization or (
            env.quantization if env.use_quantization or env.quantization != "none" else "none"
        )
        if mode in ("none", None):
            return {}
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            log.warning("quantization '%s' asked for, but bitsandbytes is not installed: loading unquantized", mode)
            return {}
        if device != "cuda":
            log.warning("BitsAndBytes needs CUDA; loading '%s' unquantized on %s", self.spec.name, device)
            return {}
        config = BitsAndBytesConfig(load_in_4bit=True) if mode == "4bit" else BitsAndBytesConfig(load_in_8bit=True)
        return {"quantization_config": config, "device_map": "auto"}

    async def unload(self) -> None:
        self._stop_worker()
        del self._model

    # ---- adapters ----

    async def load_adapter(self, name: str, path: Path) -> None:
        """Attach a PEFT LoRA adapter without reloading the base model."""
        if not (path / "adapter_config.json").exists():
            raise NotFound(f"No PEFT adapter at {path} (adapter_config.json missing).", reason="ADAPTER_NOT_FOUND")
        started = time.perf_counter()
        await self._on_worker(self._load_adapter_blocking, name, path)
        ADAPTER_LOAD_TIME.labels(self.spec.name, name).observe(time.perf_counter() - started)
        self._adapters.add(name)

    def _load_adapter_blocking(self, name: str, path: Path) -> None:
        self._model.load_adapter(str(path), adapter_name=name)
        self._model.disable_adapters()  # off until a request names it

    def _scale_adapter(self, name: str, scale: float) -> None:
        """PEFT's per-layer scaling, for this request only (requests run one at a time here)."""
        from peft.tuners.lora import LoraLayer

        for module in self._model.modules():
            if isinstance(module, LoraLayer) and name in module.scaling:
                module.set_scale(name, scale)

    async def remove_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise NotFound(f"Adapter '{name}' is not loaded on '{self.spec.name}'.", reason="ADAPTER_NOT_FOUND")
        await self._on_worker(self._model.delete_adapter, name)
        self._adapters.discard(name)

    @property
    def adapters(self) -> frozenset[str]:
        return frozenset(self._adapters)

    # ---- generation ----

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if request.adapter:
            hit = request.adapter in self._adapters
            ADAPTER_LOOKUPS.labels(self.spec.name, "hit" if hit else "miss").inc()
        if request.adapter and request.adapter not in self._adapters:
            raise FailedPrecondition(
                f"Adapter '{request.adapter}' is not loaded on '{self.spec.name}'.", reason="ADAPTER_NOT_LOADED"
            )
        prompt, stop = request.prompt_for(self._template)

        def work(cancel: threading.Event, emit: Callable[[Chunk], None]) -> None:
            param = "messages" if request.is_chat else "prompt"
            sampling, adapter, response_format = request.sampling, request.adapter, request.response_format
            self._generate_blocking(
                prompt,
                sampling,
                stop,
                cancel,
                emit,
                adapter,
                response_format,
                param,
                request.adapter_scale,
                request.logprobs,
            )

        async for chunk in self._stream_from_worker(request.request_id, work):
            yield chunk

    async def count_tokens(self, request: GenerationRequest) -> int:
        prompt, _ = request.prompt_for(self._template)
        return len(await asyncio.to_thread(hf_token_ids, self._tokenizer, prompt))

    def _generate_blocking(
        self,
        prompt: Prompt,
        sampling: SamplingParams,
        stop: tuple[str, ...],
        cancel: threading.Event,
        emit: Callable[[Chunk], None],
        adapter: str = "",
        response_format: ResponseFormat | None = None,
        prompt_param: str = "prompt",
        adapter_scale: float = 1.0,
        logprobs: int | None = None,
    ) -> None:
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        input_ids = torch.tensor([hf_token_ids(self._tokenizer, prompt)], device=self._device)
        prompt_tokens = int(input_ids.shape[1])
        max_new = self.generation_budget(prompt_tokens, self.spec.context_length, sampling.max_tokens, prompt_param)
        tokenizer = self._tokenizer
        matcher = StopSequenceMatcher(stop)
        generated: list[int] = []
        state = {"hit_stop": False, "emitted": 0}
        stats = self.stats
        step_scores: list[Any] = []  # the latest step's scores, while logprobs are asked for
        pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not sent yet

        def piece(token: int) -> bytes:
            return str(tokenizer.decode([token], skip_special_tokens=False)).encode()

        class Streamer(BaseStreamer):  # decodes on the generating thread, hands text to the loop
            first = True

            def put(self, value: Any) -> None:
                if self.first:  # generate() passes the prompt first
                    self.first = False
                    return
                for token in value.reshape(-1).tolist():
                    if token in self_eos or state["hit_stop"]:
                        continue
                    generated.append(token)
                    stats.tokens_generated += 1
                    if step_scores:
                        pending.append(token_logprob(step_scores.pop(), token, logprobs or 0, piece))
                    text = str(tokenizer.decode(generated, skip_special_tokens=True))
                    if text.endswith("\ufffd"):
                        continue  # an incomplete UTF-8 character: wait for the next token
                    fresh, state["emitted"] = text[state["emitted"] :], len(text)
                    released, hit = matcher.feed(fresh)
                    if released:
                        emit(Chunk(text=released, logprobs=tuple(pending)))
                        pending.clear()
                    state["hit_stop"] = hit

            def end(self) -> None:
                pass

        self_eos = set(self._eos_ids)

        class RecordScores(LogitsProcessor):
            """First among the request's processors: it sees the model's logits before the JSON
            constraint and the sampling warpers (a repetition penalty, when set, comes before it)."""

            def __call__(self, input_ids: Any, scores: Any) -> Any:
                step_scores[:] = [scores[0].float().cpu().numpy()]
                return scores

        class StopWhen(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = cancel.is_set() or state["hit_stop"]
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        greedy = sampling.temperature == 0.0
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "do_sample": not greedy,
            "eos_token_id": self._eos_ids,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos_ids[0],
            "repetition_penalty": sampling.repeat_penalty,
            "streamer": Streamer(),
            "stopping_criteria": StoppingCriteriaList([StopWhen()]),
        }
        if not greedy:
            kwargs.update(
                temperature=sampling.temperature if sampling.temperature is not None else 1.0,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                min_p=sampling.min_p,
            )
        processors = LogitsProcessorList([RecordScores()] if logprobs is not None else [])
        if response_format is not None and response_format.constrains:
            processors.append(self._json_constraint(response_format))
        kwargs["logits_processor"] = processors or None
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        self.stats.running += 1
        try:
            if adapter:
                self._model.enable_adapters()
                self._model.set_adapter(adapter)
                if adapter_scale != 1.0:
                    self._scale_adapter(adapter, adapter_scale)
            with torch.inference_mode():
                arguments = {k: v for k, v in kwargs.items() if v is not None}
                mask = torch.ones_like(input_ids)
                self._model.generate(input_ids, attention_mask=mask, **arguments)  # type: ignore[misc]
        finally:
            if adapter:
                if adapter_scale != 1.0:
                    self._scale_adapter(adapter, 1.0)
                self._model.disable_adapters()
            self.stats.running -= 1
        if cancel.is_set():
            return
        hit_stop = state["hit_stop"]
        finish = FinishReason.STOP if hit_stop or len(generated) < max_new else FinishReason.LENGTH
        tail = "" if hit_stop else matcher.flush()
        usage = Usage(prompt_tokens, len(generated))
        emit(Chunk(text=tail, finish_reason=finish, usage=usage, logprobs=() if hit_stop else tuple(pending)))
