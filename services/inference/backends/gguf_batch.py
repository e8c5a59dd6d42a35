"""Continuous batching for the gguf backend, on llama.cpp's low-level batch API.

llama-cpp-python's `Llama` serializes requests. Here one thread owns a llama.cpp
context with `n_parallel` sequence slots and runs one `llama_decode` per step over
every active sequence: a new request joins at the next step (its prompt is
evaluated in that step's batch, in pieces if long), and a finished or cancelled
one frees its slot at once. A finished sequence leaves its KV cells in its slot as
a prefix cache (`prefix_cache: false` frees them at once instead): a new request
goes to the free slot whose tokens share the longest prefix with its prompt and
evaluates only the rest (a repeated system prompt is evaluated once); a cancelled
or failed one always clears them. Each sequence samples with its own
sampler (greedy, top-k/p, min-p and temperature in numpy, see vocab_sampler; with a
grammar or penalties, llama.cpp's chain), its own seed and its own stop sequences.

Batching changes the numerics: llama.cpp's kernels give slightly different logits
for different batch shapes, so a sequence's greedy output alone and batched can
differ after a few tokens. `n_parallel: 1` (the default) keeps the serial,
bit-stable path.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import dataclasses
import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument
from services.inference.api import Chunk, FinishReason, SamplingParams, TokenLogprob, Usage
from services.inference.backends.logprobs import token_logprob
from services.inference.backends.stop_sequences import StopSequenceMatcher
from services.inference.backends.vocab_sampler import (
    ChainSampler,
    GrammarSampler,
    Sampler,
    Scratch,
    VocabSampler,
    handles,
)

log = logging.getLogger(__name__)

Emit = Callable[[Chunk | BaseException], object]
PAUSED_POLL_SECONDS = 0.002  # how soon paused batch work notices that interactive work has ended
SCORED_PER_STEP = 64  # prompt positions scored per decode: each keeps its logits (n_vocab floats) in llama.cpp
MIN_REUSED_PREFIX = 16  # below this, a request takes the slot with the least cached, not the longest match


def common_prefix(held: Any, tokens: list[int]) -> int:
    """How many leading tokens two token sequences share (numpy: prompts run to thousands)."""
    length = min(len(held), len(tokens))
    differ = np.flatnonzero(np.asarray(held[:length]) != np.asarray(tokens[:length]))
    return int(differ[0]) if differ.size else length


def set_lora(lc: Any, ctx: Any, lora: Any, scale: float = 1.0) -> None:
    """Apply `lora` (a llama.cpp adapter handle) to the context's next decodes; None: the base alone.
    llama.cpp does nothing when the context already has exactly these adapters."""
    if lora is None:
        status = lc.llama_set_adapters_lora(ctx, None, 0, None)
    else:
        handles = (lc.llama_adapter_lora_p_ctypes * 1)(lora)
        status = lc.llama_set_adapters_lora(ctx, handles, 1, (ctypes.c_float * 1)(scale))
    if status != 0:
        raise RuntimeError(f"llama_set_adapters_lora returned {status}")


class SharedCount:
    """A count a model's engines share: the interactive sequences running in any of them (while
    there are some, every engine pauses its low-priority ones: engines side by side share the
    cores), or the engines with work (one alone may decode on every core)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.running += delta


@dataclass
class BatchRequest:
    tokens: list[int]
    max_tokens: int
    sampling: SamplingParams  # with llama.cpp's defaults filled in
    stop: tuple[str, ...]
    grammar: str | None
    cancel: threading.Event
    emit: Emit
    adapter: str = ""  # the LoRA adapter's name ("": the base model)
    lora: Any = None  # its llama.cpp handle
    scale: float = 1.0  # how strongly it applies
    logprobs: int | None = None  # report each token's log-probability with this many alternatives
    low_priority: bool = False  # batch work: paused while interactive sequences run
    prompt_logprobs: bool = False  # score the prompt too (with `logprobs` alternatives)

    @property
    def weights(self) -> tuple[str, float]:
        """What the model computes with: sequences that differ here share no KV and no decode."""
        return (self.adapter, self.scale) if self.adapter else ("", 1.0)


@dataclass
class _Sequence:
    slot: int
    request: BatchRequest
    sampler: Sampler
    position: int = 0  # tokens of this sequence already in the KV cache
    pending: list[int] = field(default_factory=list)  # tokens to evaluate next
    generated: int = 0
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    matcher: StopSequenceMatcher = field(init=False)
    batch_index: int = -1  # where this sequence's logits are in the current batch
    cached: int = 0  # prompt tokens found in the slot's KV cache
    scored_from: tuple[int, int, int] | None = None  # this step's scored prompt: batch index, position, count
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of tokens whose text is not sent yet
    prompt_logprobs: list[TokenLogprob] | None = None  # the scored prompt, until the first chunk carries it

    def __post_init__(self) -> None:
        self.matcher = StopSequenceMatcher(self.request.stop)


class BatchEngine:
    def __init__(
        self,
        llm: Any,
        n_parallel: int,
        n_ctx_per_sequence: int,
        n_threads: int,
        n_batch: int,
        prefix_cache: bool = True,
        n_threads_batch: int | None = None,
        min_batch: int = 1,
        interactive: SharedCount | None = None,
        swa_full: bool = False,
        busy_engines: SharedCount | None = None,
        n_threads_alone: int | None = None,
        kv_cells: int | None = None,
    ) -> None:
        import llama_cpp as lc

        self._lc = lc
        self._llm = llm
        self._vocab = llm._model.vocab
        params = lc.llama_context_default_params()
        # A KV range per sequence, or one pool of `kv_cells` the sequences share (llama.cpp's
        # unified KV): more slots in the same memory, admitted while their cells fit (_fits).
        params.n_ctx = kv_cells or n_ctx_per_sequence * n_parallel
        params.n_batch = params.n_ubatch = max(n_batch, 512)
        params.n_seq_max = n_parallel
        params.n_threads, params.n_threads_batch = n_threads, n_threads_batch or n_threads
        # Single-token decodes run on `n_threads` so that engines side by side each keep a core;
        # while this is the model's only engine with work, on `n_threads_alone` (every core, as
        # llama-server decodes one stream).
        self._threads = {False: n_threads, True: n_threads_alone or n_threads}
        self._n_threads_batch = params.n_threads_batch
        self._alone = False
        self._busy_engines = busy_engines or SharedCount()
        self._busy = False
        params.kv_unified = bool(kv_cells)
        params.swa_full = swa_full
        self._ctx = lc.llama_init_from_model(llm._model.model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create the batched context")
        self._memory = lc.llama_get_memory(self._ctx)
        self._pool = lc.llama_n_ctx(self._ctx) if kv_cells else 0
        # Without full-size windows, a sliding-window layer holds only a sequence's last n_swa
        # positions: a prefix is reusable only while its window is still there.
        self._n_swa = 0 if swa_full else max(lc.llama_model_n_swa(llm._model.model), 0)
        self._n_batch = params.n_batch
        self._batch = lc.llama_batch_init(self._n_batch, 0, 1)
        self._scratch = Scratch.for_vocabulary(llm.n_vocab())
        self._prefix_cache = prefix_cache
        # Fewer decoding sequences than this are decoded one token at a time. On CPU a pair
        # gains nothing batched (2 cores: 25 ms a 2-token step on both cores, 13 ms a token on
        # one), while single tokens leave a core to the event loop, gRPC and the clients: through
        # the mesh, pairs ran at 52-63 tok/s batched and 71-74 apart. Four together beat four apart.
        self._min_batch = min_batch
        self._interactive = interactive or SharedCount()
        self.slots = n_parallel
        self._free_slots = list(range(n_parallel))
        self._slot_tokens: dict[int, list[int]] = {slot: [] for slot in range(n_parallel)}  # what each slot's KV holds
        # ... and the weights (adapter, scale) it was computed with
        self._slot_weights: dict[int, tuple[str, float]] = {slot: ("", 1.0) for slot in range(n_parallel)}
        self._active: list[_Sequence] = []
        self._incoming: queue.Queue[BatchRequest | None] = queue.Queue()
        self._admission = threading.Lock()  # requests submitted together join the same step
        self._waiting: collections.deque[BatchRequest | None] = collections.deque()  # submitted, no slot yet
        self._thread = threading.Thread(target=self._run, name="gguf-batch", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        return len(self._active)

    def cached_prefix(self, tokens: list[int], weights: tuple[str, float]) -> int:
        """The longest prefix of `tokens` that a free slot's cache holds: what this engine would
        not evaluate again. Read from the event loop while this engine's thread works: lists are
        copied whole under the GIL, and a stale answer only places a request less well."""
        return max(
            (
                common_prefix(list(self._slot_tokens[slot]), tokens[:-1])
                for slot in list(self._free_slots)
                if self._slot_weights[slot] == weights
            ),
            default=0,
        )

    def submit(self, *requests: BatchRequest) -> None:
        with self._admission:
            for request in requests:
                self._incoming.put(request)

    def close(self) -> None:
        self._incoming.put(None)
        self._thread.join(timeout=30)
        self._lc.llama_batch_free(self._batch)
        self._lc.llama_free(self._ctx)

    # ---- the loop (this thread only) ----

    def _run(self) -> None:
        while True:
            if not self._admit():
                break
            if not self._active:
                continue
            try:
                if not self._step():
                    self._idle_while_paused()
            except Exception as error:  # noqa: BLE001 - every sequence hears about it
                log.exception("batched decode failed")
                for sequence in list(self._active):
                    sequence.request.emit(error)
                    self._release(sequence)
        for sequence in list(self._active):
            sequence.request.cancel.set()
            self._release(sequence)

    def _admit(self) -> bool:
        """Move submitted requests into free slots, in order; block while idle. False: stop."""
        if not self._active and not self._waiting:
            self._set_busy(False)
            self._waiting.append(self._incoming.get())  # idle: wait for work
            self._set_busy(True)
        with self._admission:  # what was submitted together is admitted together
            while True:
                try:
                    self._waiting.append(self._incoming.get_nowait())
                except queue.Empty:
                    break
        deferred: list[BatchRequest | None] = []  # low-priority requests kept off the last free slot
        while self._waiting and self._free_slots:
            request = self._waiting.popleft()
            if request is None:
                self._waiting.extendleft(reversed(deferred))
                return False
            if request.cancel.is_set():
                continue
            if request.low_priority and len(self._free_slots) == 1 and self._active:
                deferred.append(request)  # the last slot stays free for an interactive request
                continue
            if self._pool and not self._fits(request):
                self._waiting.appendleft(request)  # in order: it goes first once running ones end
                break
            try:
                sampler = self._sampler(request)
            except InvalidArgument as error:  # this request fails alone; the engine goes on
                request.emit(error)
                continue
            # A scored prompt is evaluated whole: cached positions have no logits.
            slot, reused = self._best_slot(request.tokens, request.weights, reuse=not request.prompt_logprobs)
            self._free_slots.remove(slot)
            sequence = _Sequence(slot, request, sampler, position=reused, cached=reused)
            if request.prompt_logprobs:
                sequence.prompt_logprobs = [self._unscored(request.tokens[0])]
            sequence.pending = list(request.tokens[reused:])
            self._active.append(sequence)
            if not request.low_priority:
                self._interactive.add(1)
        self._waiting.extendleft(reversed(deferred))
        if self._waiting and self._waiting[0] is None and not self._active:
            return False
        return True

    def _fits(self, request: BatchRequest) -> bool:
        """Whether the shared pool holds `request` at its longest (prompt and every token it may
        generate) beside the running sequences' own longest, after dropping, if need be, the
        prefix caches of free slots, those least useful to it first. False: it waits. A prefix
        it may reuse is counted twice (cache and need): never short, at worst a cache dropped early."""
        running = sum(len(s.request.tokens) + s.request.max_tokens for s in self._active)
        need = len(request.tokens) + request.max_tokens
        if running + need > self._pool:
            return False
        held = sum(len(self._slot_tokens[slot]) for slot in self._free_slots)
        for slot in sorted(self._free_slots, key=lambda s: common_prefix(self._slot_tokens[s], request.tokens[:-1])):
            if running + need + held <= self._pool:
                break
            held -= len(self._slot_tokens[slot])
            self._lc.llama_memory_seq_rm(self._memory, slot, -1, -1)
            self._slot_tokens[slot].clear()
        return True

    def _best_slot(self, tokens: list[int], weights: tuple[str, float], reuse: bool = True) -> tuple[int, int]:
        """The free slot sharing the longest prefix with `tokens`, trimmed to that prefix, and how
        many tokens it reuses (never all: the last prompt token is evaluated for its logits).
        A prefix computed under another adapter is not shared: its KV cells hold other values."""

        def shared(slot: int) -> int:
            if self._slot_weights[slot] != weights or not reuse:
                return 0
            return common_prefix(self._slot_tokens[slot], tokens[:-1])

        slot = max(self._free_slots, key=shared)
        # Nothing worth reusing (a short prompt's whole prefix is): leave long caches to requests that share them.
        if shared(slot) < min(MIN_REUSED_PREFIX, len(tokens) - 1):
            slot = min(self._free_slots, key=lambda s: len(self._slot_tokens[s]))
        self._slot_weights[slot] = weights
        reused = shared(slot)
        if (
            reused
            and self._n_swa
            and self._lc.llama_memory_seq_pos_min(self._memory, slot) > max(0, reused - self._n_swa)
        ):
            reused = 0  # the window before the prefix's end was evicted (llama-server's own test)
        if reused and not self._lc.llama_memory_seq_rm(self._memory, slot, reused, -1):
            reused = 0  # this cache cannot drop a partial sequence (e.g. sliding-window layers)
        if not reused:
            self._lc.llama_memory_seq_rm(self._memory, slot, -1, -1)
        del self._slot_tokens[slot][reused:]
        return slot, reused

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self._busy_engines.add(1 if busy else -1)

    def _idle_while_paused(self) -> None:
        """Every sequence here is paused (low priority, interactive work elsewhere): wait for new
        work, briefly, instead of spinning a core the interactive work needs."""
        try:
            self._waiting.append(self._incoming.get(timeout=PAUSED_POLL_SECONDS))
        except queue.Empty:
            pass

    def _step(self) -> bool:
        """One decode per adapter in use: llama.cpp applies adapters per context, not per
        sequence, so sequences with different adapters (or none) take turns within a step.
        False when nothing was decoded (every sequence paused)."""
        groups: dict[tuple[str, float], list[_Sequence]] = {}
        for sequence in list(self._active):
            if sequence.request.cancel.is_set():
                self._release(sequence)
        # Low-priority (batch) sequences keep their slot and KV but wait while interactive ones run,
        # in this engine or another of the model's.
        interactive = self._interactive.running > 0
        for sequence in self._active:
            if not (interactive and sequence.request.low_priority):
                groups.setdefault(sequence.request.weights, []).append(sequence)
        for sequences in groups.values():
            if len(sequences) < self._min_batch and all(len(s.pending) == 1 for s in sequences):
                for sequence in sequences:  # see `min_batch`
                    self._decode([sequence])
            else:
                self._decode(sequences)
        return bool(groups)

    def _decode(self, sequences: list[_Sequence]) -> None:
        lc, batch = self._lc, self._batch
        batch.n_tokens = 0
        # In slot order: llama.cpp splits a batch over per-sequence KV streams into runs of
        # ascending sequence ids, so an unordered batch of 4 ran as 2-3 graphs (measured on
        # 2 cores: 45-52 ms a step instead of 35, a fifth of batched throughput).
        sequences = sorted(sequences, key=lambda sequence: sequence.slot)
        for sequence in sequences:
            room = self._n_batch - batch.n_tokens
            if room <= 0:
                sequence.batch_index = -1
                continue
            scoring = sequence.prompt_logprobs is not None and sequence.generated == 0
            # Every scored position's logits are kept (a vocabulary's worth each): few per step.
            piece = sequence.pending[: min(room, SCORED_PER_STEP) if scoring else room]
            sequence.pending = sequence.pending[len(piece) :]
            sequence.scored_from = (batch.n_tokens, sequence.position, len(piece)) if scoring else None
            for offset, token in enumerate(piece):
                index = batch.n_tokens
                batch.token[index] = token
                batch.pos[index] = sequence.position + offset
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = sequence.slot
                batch.logits[index] = scoring
                batch.n_tokens += 1
            sequence.position += len(piece)
            self._slot_tokens[sequence.slot].extend(piece)
            # Logits only at the end of what this sequence has evaluated so far.
            sequence.batch_index = batch.n_tokens - 1 if not sequence.pending else -1
            if sequence.batch_index >= 0:
                batch.logits[sequence.batch_index] = True
        if batch.n_tokens == 0:
            return
        set_lora(lc, self._ctx, sequences[0].request.lora, sequences[0].request.scale)
        alone = self._busy_engines.running <= 1
        if alone != self._alone:
            self._alone = alone
            lc.llama_set_n_threads(self._ctx, self._threads[alone], self._n_threads_batch)
        status = lc.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        for sequence in sequences:
            if sequence.scored_from is not None:
                self._score_prompt(sequence)
            if sequence.batch_index >= 0:
                self._sample(sequence)

    def _score_prompt(self, sequence: _Sequence) -> None:
        """Each prompt token after this step's positions, scored from their logits."""
        assert sequence.scored_from is not None and sequence.prompt_logprobs is not None
        first_index, first_position, count = sequence.scored_from
        tokens, top = sequence.request.tokens, sequence.request.logprobs or 0
        for offset in range(count):
            following = first_position + offset + 1
            if following < len(tokens):
                logits = self._lc.llama_get_logits_ith(self._ctx, first_index + offset)
                sequence.prompt_logprobs.append(self._logprob(logits, tokens[following], top))
        sequence.scored_from = None

    def _unscored(self, token: int) -> TokenLogprob:
        """The first prompt token: nothing comes before it to score it by."""
        raw = self._llm.detokenize([token], special=False)
        return TokenLogprob(raw.decode("utf-8", errors="replace"), 0.0, raw)

    def _emit(self, sequence: _Sequence, chunk: Chunk) -> None:
        """Send a chunk; the first one also carries the scored prompt."""
        if sequence.prompt_logprobs is not None:
            chunk = dataclasses.replace(chunk, prompt_logprobs=tuple(sequence.prompt_logprobs))
            sequence.prompt_logprobs = None
        sequence.request.emit(chunk)

    def _sample(self, sequence: _Sequence) -> None:
        lc, request = self._lc, sequence.request
        token = sequence.sampler.sample(self._ctx, sequence.batch_index)
        if lc.llama_vocab_is_eog(self._vocab, token):
            self._finish(sequence, FinishReason.STOP, hit_stop=False)
            return
        sequence.generated += 1
        piece = self._llm.detokenize([token], special=False)
        if request.logprobs is not None:
            logits = lc.llama_get_logits_ith(self._ctx, sequence.batch_index)
            sequence.logprobs.append(self._logprob(logits, token, request.logprobs))
        text, hit_stop = sequence.matcher.feed(sequence.decoder.decode(piece))
        if text:
            self._emit(sequence, Chunk(text=text, logprobs=tuple(sequence.logprobs)))
            sequence.logprobs.clear()
        if hit_stop:
            self._finish(sequence, FinishReason.STOP, hit_stop=True)
        elif sequence.generated >= request.max_tokens:
            self._finish(sequence, FinishReason.LENGTH, hit_stop=False)
        else:
            sequence.pending = [token]

    def _logprob(self, logits: Any, token: int, top: int) -> TokenLogprob:
        scores = np.ctypeslib.as_array(logits, shape=(self._llm.n_vocab(),))
        return token_logprob(scores, token, top, lambda t: self._llm.detokenize([t], special=False))

    def _finish(self, sequence: _Sequence, reason: FinishReason, hit_stop: bool) -> None:
        # Text held back as a possible stop-sequence prefix is real output unless a stop sequence matched.
        tail = "" if hit_stop else sequence.matcher.flush() + sequence.decoder.decode(b"", final=True)
        usage = Usage(len(sequence.request.tokens), sequence.generated, sequence.cached)
        # A matched stop sequence's tokens are not in the text, nor in the logprobs.
        logprobs = () if hit_stop else tuple(sequence.logprobs)
        self._emit(sequence, Chunk(text=tail, finish_reason=reason, usage=usage, logprobs=logprobs))
        self._release(sequence, keep_cache=self._prefix_cache)

    def _release(self, sequence: _Sequence, keep_cache: bool = False) -> None:
        """Free the slot for the next request; its KV cells stay as a prefix cache only when the
        sequence finished normally (what a cancelled one left may be half-evaluated)."""
        if not keep_cache:
            self._lc.llama_memory_seq_rm(self._memory, sequence.slot, -1, -1)
            self._slot_tokens[sequence.slot].clear()
        sequence.sampler.free()
        self._active.remove(sequence)
        if not sequence.request.low_priority:
            self._interactive.add(-1)
        self._free_slots.append(sequence.slot)

    def _sampler(self, request: BatchRequest) -> Sampler:
        """The request's own sampler: numpy's draw where it matches the chain (see vocab_sampler),
        checked against the grammar if there is one, else llama.cpp's chain."""
        sampling = request.sampling
        seed = sampling.seed if sampling.seed is not None else random.randrange(2**31)
        if not handles(sampling):
            return ChainSampler(self._lc, self._chain(sampling, request.grammar, seed)[0])

        def unconstrained_chain() -> Any:  # for logits that are not all finite
            return self._chain(sampling, None, seed)[0]

        draw = VocabSampler(self._lc, self._scratch, sampling, seed, unconstrained_chain)
        if not request.grammar:
            return draw
        chain, grammar = self._chain(sampling, request.grammar, seed)
        return GrammarSampler(self._lc, chain, grammar, draw)

    def _chain(self, sampling: SamplingParams, grammar: str | None, seed: int) -> tuple[Any, Any]:
        """A llama.cpp sampler chain for these settings, in the order llama-cpp-python builds it,
        and its grammar sampler (None without a grammar)."""
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())

        def add(sampler: Any) -> None:
            if not sampler:  # llama.cpp refused it (a grammar past its limits): never chain a NULL
                lc.llama_sampler_free(chain)
                raise InvalidArgument("llama.cpp refused the output grammar.", param="response_format")
            lc.llama_sampler_chain_add(chain, sampler)

        add(
            lc.llama_sampler_init_penalties(
                self._llm.n_vocab(),
                64,
                sampling.repeat_penalty or 1.0,
                sampling.frequency_penalty or 0.0,
                sampling.presence_penalty or 0.0,
            )
        )
        constraint = None
        if grammar:
            constraint = lc.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
            add(constraint)
        if not sampling.temperature:
            add(lc.llama_sampler_init_greedy())
        else:
            add(lc.llama_sampler_init_top_k(sampling.top_k or 0))
            add(lc.llama_sampler_init_top_p(sampling.top_p or 1.0, 1))
            add(lc.llama_sampler_init_min_p(sampling.min_p or 0.0, 1))
            add(lc.llama_sampler_init_temp(sampling.temperature))
            add(lc.llama_sampler_init_dist(ctypes.c_uint32(seed & 0xFFFFFFFF).value))
        return chain, constraint
