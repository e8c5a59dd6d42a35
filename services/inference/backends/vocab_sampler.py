"""Drawing the next token from llama.cpp's logits with numpy, for the sampling most requests use.

llama.cpp's sampler chain first copies the whole vocabulary into a candidate array (3 MB for
Gemma 3's 262,144 tokens) and then scans or sorts it in scalar code: 0.8 ms a sequence a step,
greedy or top-k, on the engine's thread while the decode threads wait for it (7.5% of a
4-sequence step on 2 cores; 2 ms at temperature 1 without top-k). Here the same draws take
vectorised passes over the logits in place:

- greedy is an argmax (the first of equal maxima, as llama.cpp's);
- top-k finds its k tokens among those at least as large as the k-th largest group maximum
  (exact: k groups have a maximum at least that large), then top-p, min-p and temperature work
  on those k as llama.cpp's samplers do, in its order;
- temperature alone is a softmax over the vocabulary, drawn by group sums then within a group.

With a grammar, the grammar checks the likeliest tokens first (`GrammarSampler`). Requests
with a penalty, or top-p / min-p over the whole vocabulary, keep llama.cpp's chain
(`ChainSampler`): those need its state or a full sort anyway.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from services.inference.api import SamplingParams

BLOCK = 256  # tokens a group: 1,024 groups for Gemma's vocabulary, cheap to rank
MAX_TOP_K = 1024  # past this, llama.cpp's own partial sort is as quick
SCANNED = 256  # tokens a grammar checks before it checks the whole vocabulary


class Sampler(Protocol):
    def sample(self, ctx: Any, index: int) -> int:
        """The next token from the logits of batch position `index`."""

    def free(self) -> None: ...


class ChainSampler:
    """llama.cpp's sampler chain (it owns the chain)."""

    def __init__(self, lc: Any, chain: Any) -> None:
        self._lc, self._chain = lc, chain

    def sample(self, ctx: Any, index: int) -> int:
        return int(self._lc.llama_sampler_sample(self._chain, ctx, index))

    def free(self) -> None:
        self._lc.llama_sampler_free(self._chain)


def handles(sampling: SamplingParams) -> bool:
    """Whether `VocabSampler` draws what llama.cpp's chain would for these settings."""
    neutral = (
        sampling.repeat_penalty in (None, 1.0) and not sampling.frequency_penalty and not sampling.presence_penalty
    )
    if not neutral:
        return False
    top_k = sampling.top_k or 0
    if not sampling.temperature or 0 < top_k <= MAX_TOP_K:
        return True
    return top_k == 0 and (sampling.top_p or 1.0) >= 1.0 and (sampling.min_p or 0.0) <= 0.0


@dataclass(frozen=True)
class Scratch:
    """Working arrays for one thread's draws (an engine samples its sequences one at a time, so
    they share these): the logits copied into whole groups, -inf past the vocabulary so that
    the tail never wins, and their weights."""

    n_vocab: int
    padded: np.ndarray
    weights: np.ndarray

    @classmethod
    def for_vocabulary(cls, n_vocab: int) -> Scratch:
        padded = np.full(-(-n_vocab // BLOCK) * BLOCK, -np.inf, dtype=np.float32)
        return cls(n_vocab, padded, np.empty_like(padded))

    def logits(self, lc: Any, ctx: Any, index: int) -> np.ndarray:
        """llama.cpp's logits at batch position `index` (its own memory, valid until the next decode)."""
        return np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), shape=(self.n_vocab,))

    def group_maxima(self) -> np.ndarray | None:
        """Each group's largest logit (see VocabSampler.draw); None when the logits are not all finite."""
        maxima = self.padded.reshape(BLOCK, len(self.padded) // BLOCK).max(axis=0)
        return maxima if np.isfinite(maxima.max()) and not np.isnan(maxima).any() else None


class VocabSampler:
    """Greedy, top-k (with top-p, min-p) or plain temperature sampling over one sequence's logits,
    distributed as llama.cpp's chain of the same settings (see `handles`). `fallback` makes that
    chain for logits that are not all finite, which only llama.cpp's own handling should judge."""

    def __init__(
        self, lc: Any, scratch: Scratch, sampling: SamplingParams, seed: int, fallback: Callable[[], Any]
    ) -> None:
        self._lc, self._scratch, self._n_vocab = lc, scratch, scratch.n_vocab
        self._temperature = sampling.temperature or 0.0
        self._top_k = sampling.top_k or 0
        self._top_p = sampling.top_p or 1.0
        self._min_p = sampling.min_p or 0.0
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._fallback_chain = fallback
        self._fallback: ChainSampler | None = None

    def sample(self, ctx: Any, index: int) -> int:
        logits = self._scratch.logits(self._lc, ctx, index)
        if not self._temperature:
            token = int(logits.argmax())
            if np.isfinite(logits[token]):
                return token
        else:
            self._scratch.padded[: self._n_vocab] = logits
            drawn = self.draw()
            if drawn is not None:
                return drawn
        if self._fallback is None:
            self._fallback = ChainSampler(self._lc, self._fallback_chain())
        return self._fallback.sample(ctx, index)

    def draw(self) -> int | None:
        """One token from the logits in the scratch arrays; None if they are not all finite.

        The vocabulary is seen as BLOCK rows: a group is a column (every row's token at one offset),
        so that group maxima and sums are row-wise vector operations, not short reductions."""
        padded, maxima = self._scratch.padded, self._scratch.group_maxima()
        if maxima is None:
            return None
        columns, best = len(maxima), float(maxima.max())
        if self._top_k:
            tokens = self._top_tokens(padded, maxima, self._top_k)
            return self._draw_among(tokens, padded[tokens])
        # Plain temperature: the weights, then a group by its sum and a token within it.
        weights = self._scratch.weights
        np.subtract(padded, np.float32(best), out=weights)
        np.multiply(weights, np.float32(1.0 / self._temperature), out=weights)
        np.exp(weights, out=weights)
        groups = weights.reshape(BLOCK, columns)
        sums = groups.sum(axis=0, dtype=np.float64)
        totals = np.cumsum(sums)
        target = self._rng.random() * totals[-1]
        column = int(np.searchsorted(totals, target, side="right"))
        if column >= columns or sums[column] == 0.0:  # rounding past the last weight
            column = int(np.flatnonzero(sums)[-1])
        within = np.cumsum(groups[:, column], dtype=np.float64)
        row = int(np.searchsorted(within, target - (totals[column - 1] if column else 0.0), side="right"))
        if row >= BLOCK or groups[row, column] == 0.0:  # rounding past the group's end
            row = int(np.flatnonzero(groups[:, column])[-1])
        return row * columns + column

    def _top_tokens(self, padded: np.ndarray, maxima: np.ndarray, k: int) -> np.ndarray:
        """The k likeliest tokens, by descending logit."""
        k = min(k, self._n_vocab)
        if k < len(maxima):
            floor = np.partition(maxima, len(maxima) - k)[len(maxima) - k]
            candidates = np.flatnonzero(padded >= floor)
        else:
            candidates = np.arange(self._n_vocab)
        values = padded[candidates]
        if k < len(candidates):
            keep = np.argpartition(values, len(candidates) - k)[len(candidates) - k :]
            candidates, values = candidates[keep], values[keep]
        order = np.argsort(-values, kind="stable")
        return candidates[order]

    def _draw_among(self, tokens: np.ndarray, values: np.ndarray, unseen: float = 0.0) -> int | None:
        """llama.cpp's top-p, min-p, temperature and dist, in that order, over the top-k `tokens`
        (by descending logit, `values`). With `unseen` > 0, top-k's other members are not in
        `tokens`: they weigh at most that much (relative to the first token's weight) and are all
        below min-p's threshold; None when top-p's cut then depends on their weight."""
        logits = values.astype(np.float64)
        by_min_p = len(tokens)
        if self._min_p > 0.0:
            by_min_p = max(int(np.count_nonzero(logits >= logits[0] + np.log(self._min_p))), 1)
        by_top_p = len(tokens)
        if self._top_p < 1.0:
            cumulative = np.cumsum(np.exp(logits - logits[0]))

            def cut(rest: float) -> int:  # the smallest prefix whose probability reaches top_p
                return int(np.searchsorted(cumulative, self._top_p * (cumulative[-1] + rest), side="left")) + 1

            by_top_p = cut(0.0)
            if unseen and min(cut(unseen), by_min_p) != min(by_top_p, by_min_p):
                return None
        kept = min(by_top_p, by_min_p, len(tokens))
        tokens, logits = tokens[:kept], logits[:kept]
        weights = np.exp((logits - logits[0]) / self._temperature)
        cumulative = np.cumsum(weights)
        pick = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
        return int(tokens[min(pick, len(tokens) - 1)])

    def constrained(self, ctx: Any, index: int, allowed: Callable[[np.ndarray], np.ndarray]) -> int | None:
        """A draw under a grammar, as llama.cpp's chain draws it with the grammar first, from the
        SCANNED likeliest tokens: enough when `allowed` (the grammar's verdict on each) passes at
        least top-k of them (greedy: one), since those are then the top-k of what it allows, or
        when min-p would drop every token below them anyway. None when the scan cannot decide,
        or the settings need the whole vocabulary."""
        needed = self._top_k if self._temperature else 1
        if not 0 < needed <= SCANNED:
            return None
        self._scratch.padded[: self._n_vocab] = self._scratch.logits(self._lc, ctx, index)
        return self.draw_allowed(allowed)

    def draw_allowed(self, allowed: Callable[[np.ndarray], np.ndarray]) -> int | None:
        """`constrained`'s draw from the logits in the scratch arrays."""
        padded, maxima = self._scratch.padded, self._scratch.group_maxima()
        if maxima is None:
            return None
        scanned = self._top_tokens(padded, maxima, SCANNED)
        valid = scanned[allowed(scanned)]
        if not self._temperature:
            return int(valid[0]) if len(valid) else None
        if len(valid) >= self._top_k or (len(valid) and len(scanned) == self._n_vocab):
            kept = valid[: self._top_k]
            return self._draw_among(kept, padded[kept])
        # Fewer of the likeliest pass than top-k holds: the rest of top-k is below the scan, and
        # the draw is decided here only when min-p drops all of that.
        if not len(valid) or self._min_p <= 0.0:
            return None
        floor, best = float(padded[scanned[-1]]), float(padded[valid[0]])
        if not floor < best + np.log(self._min_p):
            return None
        return self._draw_among(valid, padded[valid], unseen=(self._top_k - len(valid)) * np.exp(floor - best))

    def free(self) -> None:
        if self._fallback is not None:
            self._fallback.free()


class GrammarSampler:
    """A grammar-constrained draw, distributed as llama.cpp's chain with the grammar first, which
    checks every token of the vocabulary against the grammar: 33-56 ms a token for Gemma 3 and a
    small JSON schema (bench.sampling), more than the decode. Here the grammar first checks the SCANNED likeliest
    tokens (`VocabSampler.constrained`); only when too few of them pass does the step go through
    `chain`. `grammar` is the chain's own grammar sampler (the chain owns it)."""

    def __init__(self, lc: Any, chain: Any, grammar: Any, draw: VocabSampler) -> None:
        self._lc, self._chain, self._grammar, self._draw = lc, chain, grammar, draw
        self._candidates = (lc.llama_token_data * SCANNED)()
        # The same memory as numpy records: ids in, the grammar's logits (-inf: refused) out.
        self._records = np.frombuffer(self._candidates, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])

    def sample(self, ctx: Any, index: int) -> int:
        token = self._draw.constrained(ctx, index, self._allowed)
        if token is None:  # the chain's sample accepts its token into every sampler, the grammar too
            return int(self._lc.llama_sampler_sample(self._chain, ctx, index))
        self._lc.llama_sampler_accept(self._grammar, token)
        return token

    def _allowed(self, tokens: np.ndarray) -> np.ndarray:
        records = self._records[: len(tokens)]
        records["id"], records["logit"], records["p"] = tokens, 0.0, 0.0
        candidates = self._lc.llama_token_data_array(self._candidates, len(tokens), -1, False)
        self._lc.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        # llama.cpp leaves the candidates in place and in order; it only sets refused logits.
        return np.isfinite(records["logit"])

    def free(self) -> None:
        self._lc.llama_sampler_free(self._chain)
        self._draw.free()
