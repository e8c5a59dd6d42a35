"""MLX backend (macOS on Apple silicon), written against mlx-lm's documented API.

`mlx_lm.load` and `stream_generate`, with a sampler from `make_sampler`. Note the
pitfall the design documents warn about: the sampler takes `temp`, not
`temperature`; passing `temperature` to generate() is silently wrong. Requests are
serialized (Metal crashes when command buffers encode concurrently), and the KV
cache of the previous prompt is reused for the prefix the next prompt shares
(a long system prompt is then evaluated once). LoRA adapters are applied in place
with `load_adapters` and removed with `remove_lora_layers`.
Install with `pip install -r deploy/requirements/mlx.txt`.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from services.common.chat_templates import ChatTemplate, hf_token_ids
from services.common.errors import FailedPrecondition, Unavailable
from services.inference.api import Chunk, FinishReason, SamplingParams, Usage
from services.inference.backends import guidance
from services.inference.backends.base import Backend
from services.inference.backends.stop_sequences import StopSequenceMatcher
from services.inference.generation import GenerationRequest

_END = object()


def platform_problem(system: str, machine: str) -> str | None:
    """Why MLX cannot run here, or None."""
    if system != "Darwin" or machine != "arm64":
        return f"The mlx backend needs macOS on Apple silicon; this is {system} on {machine}."
    return None


def sampler_arguments(sampling: SamplingParams) -> dict[str, Any]:
    """`mlx_lm.sample_utils.make_sampler` keyword arguments: `temp`, never `temperature`."""
    return {
        "temp": sampling.temperature if sampling.temperature is not None else 0.7,
        "top_p": sampling.top_p if sampling.top_p is not None else 1.0,
        "min_p": sampling.min_p if sampling.min_p is not None else 0.0,
        "top_k": sampling.top_k if sampling.top_k is not None else 0,
    }


def shared_prefix(cached: Sequence[int], prompt: Sequence[int]) -> int:
    """How many leading tokens of `prompt` the KV cache already holds. At least one token is
    always left to evaluate, so that there are fresh logits to sample from."""
    length = 0
    for old, new in zip(cached, prompt, strict=False):
        if old != new:
            break
        length += 1
    return min(length, len(prompt) - 1)


class MlxBackend(Backend):
    supports_adapters: ClassVar[bool] = True
    supports_images: ClassVar[bool] = False
    # llguidance's MLX masks (see backends/guidance.py), in place of outlines: one library for
    # both local torch-free and torch backends, and a far lighter install.
    supports_structured_output: ClassVar[bool] = True
    supports_framed_output: ClassVar[bool] = True

    @classmethod
    def check_schema(cls, schema: dict[str, Any]) -> None:
        guidance.check_schema(schema)

    async def load(self) -> None:
        if problem := platform_problem(platform.system(), platform.machine()):
            raise Unavailable(problem, reason="BACKEND_UNAVAILABLE")
        try:
            import mlx_lm  # noqa: F401
        except ImportError as error:
            raise Unavailable(
                "The mlx backend needs mlx-lm: pip install -r deploy/requirements/mlx.txt.",
                reason="BACKEND_UNAVAILABLE",
            ) from error
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mlx-{self.spec.name}")
        self._lock = asyncio.Lock()
        self._cached_tokens: list[int] = []
        self._adapter = ""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_blocking)

    def _load_blocking(self) -> None:
        from mlx_lm import load
        from mlx_lm.models.cache import make_prompt_cache

        self._model, self._tokenizer = load(str(self.spec.resolve_path()))
        self._cache = make_prompt_cache(self._model)
        template = self.spec.chat_template or getattr(self._tokenizer, "chat_template", None) or "chatml"
        self._template = ChatTemplate.named_or_inline(template)

    async def unload(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def load_adapter(self, name: str, path: Path) -> None:
        from mlx_lm.tuner.utils import load_adapters, remove_lora_layers

        async with self._lock:

            def swap() -> None:
                if self._adapter:
                    self._model = remove_lora_layers(self._model)
                self._model = load_adapters(self._model, str(path))
                self._cached_tokens = []  # the cache was computed with other weights

            await asyncio.get_running_loop().run_in_executor(self._executor, swap)
            self._adapter = name

    async def remove_adapter(self, name: str) -> None:
        from mlx_lm.tuner.utils import remove_lora_layers

        async with self._lock:
            if self._adapter == name:

                def strip() -> None:
                    self._model = remove_lora_layers(self._model)
                    self._cached_tokens = []

                await asyncio.get_running_loop().run_in_executor(self._executor, strip)
                self._adapter = ""

    def _json_constraint(self, request: GenerationRequest) -> Any:
        """An mlx-lm logits processor (tokens, logits) -> logits that masks what the schema forbids."""
        import llguidance.hf
        import llguidance.mlx

        tokenizer = llguidance.hf.from_tokenizer(self._tokenizer._tokenizer)  # mlx-lm wraps the HF tokenizer
        matcher = guidance.matcher(tokenizer, request.response_format)
        bitmask = llguidance.mlx.allocate_token_bitmask(1, tokenizer.vocab_size)
        consumed = 0

        def constrain(tokens: Any, logits: Any) -> Any:
            nonlocal consumed
            if consumed:  # the token chosen at the previous step
                matcher.consume_token(int(tokens[-1]))
            consumed += 1
            llguidance.mlx.fill_next_token_bitmask(matcher, bitmask, 0)
            return llguidance.mlx.apply_token_bitmask(logits, bitmask)

        return constrain

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if request.adapter and request.adapter != self._adapter:
            raise FailedPrecondition(f"Adapter '{request.adapter}' is not applied.", reason="ADAPTER_NOT_LOADED")
        prompt, stop = request.prompt_for(self._template)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = False

        def run() -> None:
            from mlx_lm import stream_generate
            from mlx_lm.models.cache import trim_prompt_cache
            from mlx_lm.sample_utils import make_sampler

            tokens = hf_token_ids(self._tokenizer, prompt)
            processors = [self._json_constraint(request)] if request.response_format.constrains else None
            reuse = shared_prefix(self._cached_tokens, tokens)
            trim_prompt_cache(self._cache, len(self._cached_tokens) - reuse)
            matcher, generated, finish = StopSequenceMatcher(stop), 0, FinishReason.LENGTH
            for response in stream_generate(
                self._model,
                self._tokenizer,
                tokens[reuse:],
                max_tokens=request.sampling.max_tokens or self.spec.context_length - len(tokens),
                sampler=make_sampler(**sampler_arguments(request.sampling)),
                logits_processors=processors,
                prompt_cache=self._cache,
            ):
                if cancelled:
                    break
                generated += 1
                text, hit = matcher.feed(response.text)
                if text:
                    loop.call_soon_threadsafe(queue.put_nowait, Chunk(text=text))
                if hit or response.finish_reason == "stop":
                    finish = FinishReason.STOP
                    break
            self._cached_tokens = tokens  # generated tokens are trimmed off next time
            last = Chunk(text="", finish_reason=finish, usage=Usage(len(tokens), generated))
            loop.call_soon_threadsafe(queue.put_nowait, last)

        async with self._lock:
            worker = loop.run_in_executor(self._executor, run)
            worker.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, _END))
            try:
                while (item := await queue.get()) is not _END:
                    yield item
                await worker
            finally:
                cancelled = True
