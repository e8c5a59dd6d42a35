"""llama.cpp backend (llama-cpp-python) for GGUF models.

llama.cpp calls block and a `Llama` object is not thread-safe, so each model
owns one worker thread: generations run there one at a time, off the event
loop, and hand tokens back through an asyncio queue. The thread checks a
cancel flag before every token, so a closed stream stops within one token.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from services.common.chat_templates import ChatTemplate, Prompt
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.inference.api import Chunk, FinishReason, OutputFrame, ResponseFormat, SamplingParams, TokenLogprob, Usage
from services.inference.backends.base import BackendOptions
from services.inference.backends.gguf_batch import (
    BatchEngine,
    BatchRequest,
    SharedCount,
    common_prefix,
    set_lora,
)
from services.inference.backends.gguf_lora import convert_peft_to_gguf
from services.inference.backends.grammar_builds import build_grammar
from services.inference.backends.json_schema_grammar import enforceable, with_ranges
from services.inference.backends.logprobs import token_logprob
from services.inference.backends.stop_sequences import StopSequenceMatcher
from services.inference.backends.threaded import ThreadedBackend
from services.inference.generation import GenerationRequest
from services.inference.metrics import ADAPTER_LOAD_TIME, ADAPTER_LOOKUPS

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
def _gbnf(schema_json: str, frame: OutputFrame | None = None) -> str:
    """llama.cpp's JSON-schema-to-GBNF grammar (inside `frame`'s literal text, if any),
    converted once per schema and frame. The schema has passed the grammar budget
    (services/inference/schema_limits.py), so the text stays small."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = with_ranges(_joined_surrogates(json_schema_to_gbnf(schema_json)))
    except Exception as error:  # noqa: BLE001 - the converter raises assorted types for unsupported features
        raise InvalidArgument(
            f"Unsupported JSON schema feature: {error or type(error).__name__}", param="response_format"
        ) from error
    if len(gbnf) > MAX_GBNF_CHARS:
        raise InvalidArgument(
            f"The JSON schema's grammar is too large ({len(gbnf)} characters; the limit is {MAX_GBNF_CHARS}).",
            param="response_format",
        )
    return _framed(gbnf, frame) if frame is not None else gbnf


# The converter writes a character beyond the BMP as a JSON surrogate pair (\ud882\udf51); GBNF
# reads each half as a code point of its own, which is no character at all. Joined: \U00030b51.
_SURROGATE_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)


def _joined_surrogates(gbnf: str) -> str:
    def joined(match: re.Match[str]) -> str:
        high, low = int(match[1], 16), int(match[2], 16)
        return f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"

    return _SURROGATE_PAIR.sub(joined, gbnf)


MAX_GBNF_CHARS = 200_000
MIN_PLACED_PREFIX = 64  # cached prompt tokens worth sending a request to a (slightly) busier engine


def _framed(gbnf: str, frame: OutputFrame) -> str:
    """The JSON grammar's root becomes one item: `open item close`, repeated with
    `separator` up to `max_items`, or plain text that does not start like `open`."""
    literal = json.dumps  # GBNF string literals take JSON's escapes
    body = re.sub(r"^root ::=", "framed-json ::=", gbnf, flags=re.MULTILINE)
    item = f"{literal(frame.open)} framed-json {literal(frame.close)}"
    items = f"item ({literal(frame.separator)} item){{0,{frame.max_items - 1}}}" if frame.max_items > 1 else "item"
    rules = [f"item ::= {item}", f"items ::= {items}"]
    if frame.allow_text:  # prose must not start like a call ("{" for a bare object)
        first = (frame.open or "{")[0].replace("\\", "\\\\").replace("]", "\\]")
        rules += ["root ::= items | text", f"text ::= [^{first}] [^\\x00]*"]
    else:
        rules.append("root ::= items")
    return "\n".join(rules) + "\n" + body


def _reused_prefix(llm: Any, tokens: list[int]) -> int:
    """Prompt tokens llama-cpp-python will not evaluate again: the common prefix with what the
    context already holds (a fully cached prompt still replays its last token, for the logits)."""
    common = common_prefix(llm.input_ids[: llm.n_tokens], tokens)
    return common - 1 if common == len(tokens) else common


def _coalesced(item: Chunk | BaseException, more: asyncio.Queue[Chunk | BaseException]) -> Chunk | BaseException:
    """`item` merged with the text chunks already waiting behind it: when the reader falls behind,
    one message carries several tokens instead of per-token overhead piling up."""
    if isinstance(item, BaseException):
        return item
    while item.finish_reason is None and not more.empty():
        following = more.get_nowait()
        if isinstance(following, BaseException):
            more.put_nowait(following)  # raised on the next read, after this text
            break
        item = Chunk(
            text=item.text + following.text,
            finish_reason=following.finish_reason,
            usage=following.usage,
            tokens=item.tokens + (following.tokens if following.text else 0),
            logprobs=item.logprobs + following.logprobs,
            prompt_logprobs=item.prompt_logprobs or following.prompt_logprobs,
        )
    return item


def usable_cores(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    Kubernetes CPU limit). os.cpu_count() is the node's count: 32 threads under a 4-CPU
    limit would spend their time throttled."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, int(quota) // int(period)))


class GGUFOptions(BackendOptions):
    n_parallel: int = Field(1, ge=1, le=1024, description="Sequences decoded together (batching); 1: serial.")
    n_threads: int | None = Field(None, ge=1, description="Decode threads. Unset: half the usable cores.")
    n_threads_batch: int | None = Field(None, ge=1, description="Prompt threads. Unset: n_threads, else all cores.")
    n_batch: int = Field(512, ge=1, description="Prompt tokens evaluated per step.")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU; -1: all.")
    tensor_split: list[float] | None = Field(None, description="Shares across GPUs, e.g. [0.5, 0.5].")
    flash_attn: bool = False
    n_engines: int | None = Field(None, ge=1, description="Batch engines side by side. Unset: 1.")
    prefix_cache: bool = Field(True, description="Reuse a finished sequence's cached prompt prefix.")
    # On: in bench/prefix.py (two applications' long system prompts at c=4) least-busy placement
    # fell into overwriting the other application's caches in 3 of 5 runs (TTFT p50 4-4.7 s, 21%
    # cached); placement never did (218-273 ms, 58-90% cached). See README.
    prefix_placement: bool = Field(
        True, description="Send a request to the engine that caches its longest prefix, if not much busier."
    )
    min_batch: int | None = Field(
        None, ge=1, description="Sequences before batching pays. Unset: 1; 3 with CPU engines side by side."
    )
    n_threads_alone: int | None = Field(
        None, ge=1, description="Decode threads of an engine while it is the model's only busy one. Unset: all."
    )
    # Off, as in llama-server: sliding-window layers keep only their window per sequence (Gemma 3
    # 270M at 4 x 8192 tokens: 1013 MB resident with full-size windows, see README). A cached
    # prefix is then reused only while its window is still held.
    swa_full: bool = Field(False, description="Full-size KV for sliding-window layers (batched decoding).")
    # Set: the slots share one pool (llama.cpp's unified KV), so more slots fit the memory of
    # fewer; a request waits while its longest (prompt plus max tokens) does not fit beside the
    # running ones. At least context_length per engine.
    kv_cells: int | None = Field(
        None, ge=1, description="KV cells the slots share (split among engines). Unset: context_length per slot."
    )


class GGUFBackend(ThreadedBackend):
    Options = GGUFOptions
    options: GGUFOptions

    @property
    def parallel_slots(self) -> int:
        return self.options.n_parallel

    supports_structured_output: ClassVar[bool] = True
    supports_adapters: ClassVar[bool] = True  # GGUF LoRA through llama.cpp's adapter API; see gguf_lora.py
    supports_adapter_scale: ClassVar[bool] = True

    supports_framed_output: ClassVar[bool] = True
    supports_logprobs: ClassVar[bool] = True  # from llama.cpp's logits of each sampled position
    supports_prompt_logprobs: ClassVar[bool] = True  # with batch engines (n_parallel > 1): see generate_stream

    @classmethod
    def check_schema(cls, schema: dict[str, Any]) -> None:
        enforceable(schema)  # what needs no model: the converter's coverage; generate_stream parses it

    async def _grammar(self, response_format: ResponseFormat) -> str:
        """The request's GBNF, converted on a grammar thread (backends/grammar_builds.py) and parsed once by
        llama.cpp itself: a grammar llama.cpp refuses is a 400 here, never a NULL sampler later."""
        schema_json = json.dumps(enforceable(response_format.json_schema()))
        return await build_grammar(
            functools.partial(self._parsed_grammar, schema_json, response_format.frame), "response_format"
        )

    def _parsed_grammar(self, schema_json: str, frame: OutputFrame | None) -> str:
        return self._checked_gbnf(_gbnf(schema_json, frame))

    def _checked_gbnf(self, gbnf: str) -> str:
        """`gbnf`, once llama.cpp has parsed it; InvalidArgument if it refuses it."""
        import llama_cpp as lc

        with self._parsed_lock:  # grammar threads share the record
            if gbnf in self._parsed_grammars:
                return gbnf
        sampler = lc.llama_sampler_init_grammar(self._llm._model.vocab, gbnf.encode(), b"root")
        if not sampler:
            raise InvalidArgument(
                "llama.cpp refused the grammar for this JSON schema (repetitions or nesting past its limits).",
                param="response_format",
            )
        lc.llama_sampler_free(sampler)
        with self._parsed_lock:
            self._parsed_grammars[gbnf] = None
            if len(self._parsed_grammars) > 64:
                self._parsed_grammars.pop(next(iter(self._parsed_grammars)))
        return gbnf

    async def load(self) -> None:
        self._loras: dict[str, Any] = {}  # adapter name -> llama.cpp adapter handle
        self._context_lora: tuple[str, float] = ("", 1.0)  # the adapter (and scale) the serial KV was built with
        self._parsed_grammars: dict[str, None] = {}  # GBNF llama.cpp accepted, oldest first, at most 64
        self._parsed_lock = threading.Lock()
        self._start_worker()
        await self._on_worker(self._load_blocking)

    def _load_blocking(self) -> None:
        from llama_cpp import Llama, llama_vocab_is_eog  # heavy: imported only when this backend is used

        path = self.spec.resolve_path()
        if not path.is_file():
            raise Unavailable(f"GGUF file for model '{self.spec.name}' not found: {path}")
        options = self.options
        n_parallel = options.n_parallel
        # Engines: by default one, batching every sequence on every core, as llama-server does.
        # `n_engines` > 1 puts engines side by side, each with its own context, thread and share
        # of the slots over the same weights. Side by side lost at every load once the OpenMP
        # stall below was gone (bench.engines, 2 cores, 1/2/4 sequences: 39/61/90 tok/s batched,
        # 23/46/45-65 apart), and engines that each own a thread team bring the stall back.
        n_engines = max(min(options.n_engines or 1, n_parallel), 1) if n_parallel > 1 else 0
        kv_cells = options.kv_cells // n_engines if options.kv_cells and n_engines else None
        if kv_cells is not None and kv_cells < self.spec.context_length:
            raise FailedPrecondition(
                f"model '{self.spec.name}': kv_cells gives each engine {kv_cells} cells, fewer than"
                f" its context_length {self.spec.context_length}"
            )
        # llama-cpp-python's defaults: decoding on half the cores, prompts on all. Measured on 2
        # cores, one decode thread gave steadier and faster streams than two (bench/chat.py): the
        # other core serves the event loop, gRPC and the clients instead of preempting a barrier.
        cores = usable_cores()
        self._threads = options.n_threads or max(cores // 2, 1)
        self._threads_batch = options.n_threads_batch or options.n_threads or cores
        # With batching, this context only warms up (tokenizing needs the vocabulary alone); the
        # engines have their own. A small one keeps its KV and compute buffers small, and a single
        # thread keeps this worker from owning an OpenMP thread team: once two threads of a process
        # own one, libgomp stops spinning at barriers and sleeps instead (a decode went from 27 to
        # 49 ms on 2 cores).
        serial_threads = (self._threads, self._threads_batch) if n_parallel == 1 else (1, 1)
        self._llm = Llama(
            model_path=str(path),
            n_ctx=self.spec.context_length if n_parallel == 1 else min(self.spec.context_length, 64),
            n_threads=serial_threads[0],
            n_threads_batch=serial_threads[1],
            n_batch=options.n_batch,
            n_gpu_layers=options.n_gpu_layers,
            tensor_split=options.tensor_split,
            flash_attn=options.flash_attn,
            verbose=False,
        )
        self._is_end_of_generation: Callable[[int], bool] = lambda token: llama_vocab_is_eog(
            self._llm._model.vocab, token
        )
        self._template = self._chat_template()
        warmup = SamplingParams(max_tokens=1)
        self._generate_blocking(self._tokens(Prompt.raw("Hello")), warmup, (), threading.Event(), lambda _: None)
        on_gpu = bool(options.n_gpu_layers)
        interactive = SharedCount()  # one engine's interactive work pauses every engine's batch work
        busy_engines = SharedCount()  # an engine alone with work decodes on every core
        self._engines: list[BatchEngine] = [
            BatchEngine(
                self._llm,
                n_parallel // n_engines,
                self.spec.context_length,
                self._threads,
                options.n_batch,
                prefix_cache=options.prefix_cache,
                swa_full=options.swa_full,
                n_threads_batch=self._threads_batch,
                # Engines side by side on CPU decode pairs one at a time (see BatchEngine).
                min_batch=options.min_batch or (3 if n_engines > 1 and not on_gpu else 1),
                interactive=interactive,
                busy_engines=busy_engines,
                n_threads_alone=options.n_threads_alone or self._threads_batch,
                kv_cells=kv_cells,
            )
            for _ in range(n_engines)
        ]
        self._engine_load = [0] * n_engines  # requests in flight per engine (event loop only)
        log.info(
            "loaded GGUF model '%s' from %s (%d parallel sequences, %d engines)",
            self.spec.name,
            path,
            n_parallel,
            n_engines,
        )

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
        for engine in self._engines:
            await asyncio.to_thread(engine.close)
        self._llm.close()  # frees the adapters with the model

    # ---- adapters ----

    async def load_adapter(self, name: str, path: Path) -> None:
        """Convert the PEFT adapter to a GGUF LoRA (once) and load it next to the base model:
        no reload, and requests with other adapters or none keep running."""
        started = time.perf_counter()
        await self._on_worker(self._load_adapter_blocking, name, path)
        ADAPTER_LOAD_TIME.labels(self.spec.name, name).observe(time.perf_counter() - started)

    def _load_adapter_blocking(self, name: str, path: Path) -> None:
        import llama_cpp as lc

        architecture = self._llm.metadata["general.architecture"]
        blocks = int(self._llm.metadata[f"{architecture}.block_count"])
        lora_file = convert_peft_to_gguf(path, self.spec.resolve_path(), architecture, blocks)
        handle = lc.llama_adapter_lora_init(self._llm._model.model, str(lora_file).encode())
        if not handle:
            raise FailedPrecondition(
                f"llama.cpp could not load adapter '{name}' for '{self.spec.name}'.", reason="ADAPTER_INCOMPATIBLE"
            )
        self._loras[name] = handle

    @property
    def adapters(self) -> frozenset[str]:
        return frozenset(self._loras)

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if request.adapter:
            hit = request.adapter in self._loras
            ADAPTER_LOOKUPS.labels(self.spec.name, "hit" if hit else "miss").inc()
            if not hit:
                raise FailedPrecondition(
                    f"Adapter '{request.adapter}' is not loaded on '{self.spec.name}'.", reason="ADAPTER_NOT_LOADED"
                )
        adapter, scale = request.adapter, request.adapter_scale
        prompt, stop = request.prompt_for(self._template)
        prompt_param = "messages" if request.is_chat else "prompt"
        sampling = request.sampling
        response_format = request.response_format
        grammar = await self._grammar(response_format) if response_format.constrains else None
        tokens = await asyncio.to_thread(self._tokens, prompt)  # the vocabulary only: safe beside generation
        if request.prompt_logprobs and not self._engines:
            raise InvalidArgument(
                f"Scoring a prompt (echo with logprobs) needs batched decoding: model '{self.spec.name}' has"
                " n_parallel 1 (llama-cpp-python's serial path keeps no prompt logits).",
                param="logprobs",
            )

        if self._engines:
            async for chunk in self._generate_batched(tokens, request, stop, grammar, prompt_param):
                yield chunk
            return

        def work(cancel: threading.Event, emit: Callable[[Chunk], None]) -> None:
            self._generate_blocking(
                tokens, sampling, stop, cancel, emit, prompt_param, grammar, adapter, scale, request.logprobs
            )

        async for chunk in self._stream_from_worker(request.request_id, work):
            yield chunk

    async def count_tokens(self, request: GenerationRequest) -> int:
        prompt, _ = request.prompt_for(self._template)
        return len(await asyncio.to_thread(self._tokens, prompt))

    def _tokens(self, prompt: Prompt) -> list[int]:
        return prompt.token_ids(
            lambda text, first, special: self._llm.tokenize(text.encode("utf-8"), add_bos=first, special=special)
        )

    async def _generate_batched(
        self,
        tokens: list[int],
        generation: GenerationRequest,
        stop: tuple[str, ...],
        grammar: Any,
        prompt_param: str,
    ) -> AsyncIterator[Chunk]:
        """One sequence on the least busy engine: joins its running batch at the next step."""
        sampling, adapter = generation.sampling, generation.adapter
        max_tokens = self.generation_budget(len(tokens), self.spec.context_length, sampling.max_tokens, prompt_param)
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()
        cancel = threading.Event()
        request = BatchRequest(
            tokens=tokens,
            max_tokens=max_tokens,
            sampling=sampling.with_defaults(_LLAMA_DEFAULTS),
            stop=stop,
            grammar=grammar,
            cancel=cancel,
            emit=lambda item: loop.call_soon_threadsafe(chunks.put_nowait, item),
            adapter=adapter,
            lora=self._loras.get(adapter) if adapter else None,
            scale=generation.adapter_scale,
            logprobs=generation.logprobs,
            low_priority=generation.low_priority,
            prompt_logprobs=generation.prompt_logprobs,
        )
        engine = self._pick_engine(request)
        self._engine_load[engine] += 1
        self.stats.running += 1
        try:
            self._engines[engine].submit(request)
            while True:
                item = _coalesced(await chunks.get(), chunks)
                if isinstance(item, InvalidArgument):
                    raise item
                if isinstance(item, BaseException):
                    raise Unavailable(f"Generation failed: {item}") from item
                self.stats.tokens_generated += item.tokens if item.text else 0
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            cancel.set()  # a client that left frees its slot at the next step
            self.stats.running -= 1
            self._engine_load[engine] -= 1

    def _pick_engine(self, request: BatchRequest) -> int:
        """The least busy engine; or, when one with a free slot and no more than a request busier
        holds a long prefix of this prompt in that slot's cache (a shared system prompt), that one:
        its prompt is not evaluated again, and nothing waits for a slot."""
        loads = self._engine_load
        least = min(range(len(loads)), key=loads.__getitem__)
        if len(self._engines) == 1 or not self.options.prefix_cache or not self.options.prefix_placement:
            return least
        shared = {
            i: self._engines[i].cached_prefix(request.tokens, request.weights)
            for i in range(len(loads))
            if loads[i] <= loads[least] + 1 and loads[i] < self._engines[i].slots
        }
        if not shared:
            return least
        best = max(shared, key=lambda i: (shared[i], -loads[i]))
        return best if shared[best] >= MIN_PLACED_PREFIX and shared[best] > shared.get(least, 0) else least

    def _generate_blocking(
        self,
        tokens: list[int],
        sampling: SamplingParams,
        stop: tuple[str, ...],
        cancel: threading.Event,
        emit: Callable[[Chunk], None],
        prompt_param: str = "prompt",
        grammar: Any = None,
        adapter: str = "",
        scale: float = 1.0,
        logprobs: int | None = None,
    ) -> None:
        import llama_cpp as lc

        llm = self._llm
        max_tokens = self.generation_budget(len(tokens), llm.n_ctx(), sampling.max_tokens, prompt_param)
        llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**31))
        if (adapter, scale) != self._context_lora:
            # The cached prefix was computed with other weights: it cannot be reused.
            set_lora(lc, llm._ctx.ctx, self._loras.get(adapter) if adapter else None, scale)
            llm.reset()
            self._context_lora = (adapter, scale)

        self.stats.running += 1
        try:
            self._decode_loop(tokens, max_tokens, sampling, stop, cancel, emit, grammar, logprobs)
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
        logprobs: int | None = None,
    ) -> None:
        import llama_cpp as lc

        llm = self._llm
        if sampling.seed is not None:
            # Reusing a cached prefix changes the batch shapes and so, slightly, the logits:
            # a seeded request evaluates its whole prompt so that the same seed gives the same text.
            llm.reset()
        cached = _reused_prefix(llm, tokens)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        matcher = StopSequenceMatcher(stop)
        generated = 0
        finish, hit_stop_sequence = FinishReason.LENGTH, False
        pending: list[TokenLogprob] = []  # of tokens whose text is not sent yet
        if grammar:
            from llama_cpp.llama_grammar import LlamaGrammar

            grammar = LlamaGrammar.from_string(grammar, verbose=False)  # parsed by llama.cpp before: it accepts it
        for token in llm.generate(tokens, grammar=grammar, **_llama_sampling_arguments(sampling)):
            if cancel.is_set():
                return
            if self._is_end_of_generation(token):
                finish = FinishReason.STOP
                break
            generated += 1
            self.stats.tokens_generated += 1
            if logprobs is not None:  # the logits this token was sampled from: the last evaluated position's
                scores = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
                pending.append(token_logprob(scores, token, logprobs, lambda t: llm.detokenize([t], special=False)))
            text, hit_stop_sequence = matcher.feed(decoder.decode(llm.detokenize([token], special=False)))
            if text:
                emit(Chunk(text=text, logprobs=tuple(pending)))
                pending.clear()
            if hit_stop_sequence:
                finish = FinishReason.STOP
                break
            if generated >= max_tokens:
                break
        # Text held back as a possible stop-sequence prefix is real output unless a stop sequence matched.
        tail = "" if hit_stop_sequence else matcher.flush() + decoder.decode(b"", final=True)
        usage = Usage(len(tokens), generated, cached)
        emit(Chunk(text=tail, finish_reason=finish, usage=usage, logprobs=() if hit_stop_sequence else tuple(pending)))
