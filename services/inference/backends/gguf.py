"""llama.cpp backend (llama-cpp-python) for GGUF models.

llama.cpp calls block and a `Llama` object is not thread-safe, so each model
owns one worker thread: generations run there one at a time, off the event
loop, and hand tokens back through an asyncio queue. The thread checks a
cancel flag before every token, so a closed stream stops within one token.
"""

from __future__ import annotations

import codecs
import functools
import json
import logging
import os
import random
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from services.common.errors import InvalidArgument, Unavailable
from services.inference.backends.json_schema_grammar import enforceable
from services.inference.backends.threaded import ThreadedBackend
from services.inference.chat_templates import ChatTemplate
from services.inference.domain import Chunk, FinishReason, GenerationRequest, SamplingParams, Usage
from services.inference.stop_sequences import StopSequenceMatcher

log = logging.getLogger(__name__)

# llama.cpp's own defaults, used where neither the request nor the registry sets a value.
_LLAMA_DEFAULTS = SamplingParams(
    temperature=0.8,
    top_p=0.95,
    top_k=40,
    min_p=0.05,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    repeat_penalty=1.0,
)


def _llama_sampling_arguments(sampling: SamplingParams) -> dict[str, Any]:
    """`Llama.generate` keyword arguments; llama.cpp's defaults fill what neither request nor registry set."""
    resolved = sampling.with_defaults(_LLAMA_DEFAULTS)
    return {
        "temp": resolved.temperature,
        "top_p": resolved.top_p,
        "top_k": resolved.top_k,
        "min_p": resolved.min_p,
        "presence_penalty": resolved.presence_penalty,
        "frequency_penalty": resolved.frequency_penalty,
        "repeat_penalty": resolved.repeat_penalty,
    }


@functools.lru_cache(maxsize=64)
def _grammar(schema_json: str) -> Any:
    """llama.cpp's JSON-schema-to-GBNF grammar, compiled once per schema."""
    from llama_cpp.llama_grammar import LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(schema_json, verbose=False)
    except Exception as error:  # noqa: BLE001 - the converter raises assorted types for unsupported features
        raise InvalidArgument(
            f"Unsupported JSON schema feature: {error or type(error).__name__}", param="response_format"
        ) from error


class GGUFBackend(ThreadedBackend):
    supports_structured_output: ClassVar[bool] = True

    @classmethod
    def check_schema(cls, schema: dict[str, Any]) -> None:
        _grammar(json.dumps(enforceable(schema), sort_keys=True))

    async def load(self) -> None:
        self._start_worker()
        await self._on_worker(self._load_blocking)

    def _load_blocking(self) -> None:
        from llama_cpp import Llama, llama_vocab_is_eog  # heavy: imported only when this backend is used

        path = self.spec.resolve_path()
        if not path.is_file():
            raise Unavailable(f"GGUF file for model '{self.spec.name}' not found: {path}")
        options = self.spec.options
        self._llm = Llama(
            model_path=str(path),
            n_ctx=self.spec.context_length,
            n_threads=options.get("n_threads") or os.cpu_count(),
            n_batch=options.get("n_batch", 512),
            n_gpu_layers=options.get("n_gpu_layers", 0),
            tensor_split=options.get("tensor_split"),  # e.g. [0.5, 0.5] across two GPUs
            flash_attn=options.get("flash_attn", False),
            verbose=False,
        )
        self._is_end_of_generation: Callable[[int], bool] = lambda token: llama_vocab_is_eog(
            self._llm._model.vocab, token
        )
        self._template = self._chat_template()
        warmup = SamplingParams(max_tokens=1)
        self._generate_blocking("Hello", warmup, (), threading.Event(), lambda _: None)
        log.info("loaded GGUF model '%s' from %s", self.spec.name, path)

    def _chat_template(self) -> ChatTemplate:
        metadata = self._llm.metadata
        bos, eos = (
            self._llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""
            for token in (self._llm.token_bos(), self._llm.token_eos())
        )
        source = self.spec.chat_template or metadata.get("tokenizer.chat_template")
        if not source:
            log.warning("model '%s' has no chat template; using chatml", self.spec.name)
            source = "chatml"
        return ChatTemplate.named_or_inline(source, bos_token=bos, eos_token=eos)

    async def unload(self) -> None:
        self._stop_worker()
        self._llm.close()

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        prompt, stop = self._template.prompt_for(request)
        prompt_param = "messages" if request.is_chat else "prompt"
        sampling = request.sampling
        grammar = (
            _grammar(json.dumps(enforceable(request.response_format.json_schema()), sort_keys=True))
            if request.response_format.constrains
            else None
        )

        def work(cancel: threading.Event, emit: Callable[[Chunk], None]) -> None:
            self._generate_blocking(prompt, sampling, stop, cancel, emit, prompt_param, grammar)

        async for chunk in self._stream_from_worker(request.request_id, work):
            yield chunk

    def _generate_blocking(
        self,
        prompt: str,
        sampling: SamplingParams,
        stop: tuple[str, ...],
        cancel: threading.Event,
        emit: Callable[[Chunk], None],
        prompt_param: str = "prompt",
        grammar: Any = None,
    ) -> None:
        llm = self._llm
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        max_tokens = self.generation_budget(len(tokens), llm.n_ctx(), sampling.max_tokens, prompt_param)
        llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**31))

        self.stats.running += 1
        try:
            self._decode_loop(tokens, max_tokens, sampling, stop, cancel, emit, grammar)
        finally:
            self.stats.running -= 1

    def _decode_loop(
        self,
        tokens: list[int],
        max_tokens: int,
        sampling: SamplingParams,
        stop: tuple[str, ...],
        cancel: threading.Event,
        emit: Callable[[Chunk], None],
        grammar: Any = None,
    ) -> None:
        llm = self._llm
        if sampling.seed is not None:
            # Reusing a cached prefix changes the batch shapes and so, slightly, the logits:
            # a seeded request evaluates its whole prompt so that the same seed gives the same text.
            llm.reset()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        matcher = StopSequenceMatcher(stop)
        generated = 0
        finish, hit_stop_sequence = FinishReason.LENGTH, False
        for token in llm.generate(tokens, grammar=grammar, **_llama_sampling_arguments(sampling)):
            if cancel.is_set():
                return
            if self._is_end_of_generation(token):
                finish = FinishReason.STOP
                break
            generated += 1
            self.stats.tokens_generated += 1
            text, hit_stop_sequence = matcher.feed(decoder.decode(llm.detokenize([token], special=False)))
            if text:
                emit(Chunk(text=text))
            if hit_stop_sequence:
                finish = FinishReason.STOP
                break
            if generated >= max_tokens:
                break
        # Text held back as a possible stop-sequence prefix is real output unless a stop sequence matched.
        tail = "" if hit_stop_sequence else matcher.flush() + decoder.decode(b"", final=True)
        emit(Chunk(text=tail, finish_reason=finish, usage=Usage(len(tokens), generated)))
