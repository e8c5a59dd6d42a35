"""The numpy sampler draws what llama.cpp's chain of the same settings would: the chain itself,
applied to the same logits, is the reference (its candidates and their tempered logits)."""

from __future__ import annotations

import ctypes

import llama_cpp.llama_cpp as lc
import numpy as np
import pytest

from services.inference.api import SamplingParams
from services.inference.backends.vocab_sampler import BLOCK, Scratch, VocabSampler, handles

VOCAB = 300 * BLOCK + 37  # 301 groups of BLOCK; the 219 places past the vocabulary must never be drawn
DRAWS = 5_000


def logits(seed: int = 0, spread: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(VOCAB) * spread).astype(np.float32)


def chain_distribution(values: np.ndarray, sampling: SamplingParams) -> dict[int, float]:
    """llama.cpp's top-k, top-p, min-p and temperature over `values` (as gguf_batch chains them),
    then the softmax its dist sampler draws from."""
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    for sampler in (
        lc.llama_sampler_init_top_k(sampling.top_k or 0),
        lc.llama_sampler_init_top_p(sampling.top_p or 1.0, 1),
        lc.llama_sampler_init_min_p(sampling.min_p or 0.0, 1),
        lc.llama_sampler_init_temp(sampling.temperature),
    ):
        lc.llama_sampler_chain_add(chain, sampler)
    data = (lc.llama_token_data * VOCAB)(*(lc.llama_token_data(i, float(v), 0.0) for i, v in enumerate(values)))
    candidates = lc.llama_token_data_array(data, VOCAB, -1, False)
    lc.llama_sampler_apply(chain, ctypes.byref(candidates))
    lc.llama_sampler_free(chain)
    kept = [(data[i].id, data[i].logit) for i in range(candidates.size) if np.isfinite(data[i].logit)]
    weights = np.exp(np.array([logit for _, logit in kept], dtype=np.float64) - max(logit for _, logit in kept))
    return {token: float(w) for (token, _), w in zip(kept, weights / weights.sum(), strict=True)}


def draws(values: np.ndarray, sampling: SamplingParams, seed: int = 1, count: int = DRAWS) -> np.ndarray:
    scratch = Scratch.for_vocabulary(VOCAB)
    sampler = VocabSampler(lc, scratch, sampling, seed, fallback=None)
    scratch.padded[:VOCAB] = values
    return np.array([sampler.draw() for _ in range(count)])


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(temperature=1.0, top_k=40),
        SamplingParams(temperature=0.7, top_k=64, top_p=0.95),  # the default model's defaults
        SamplingParams(temperature=1.3, top_k=200, top_p=0.5, min_p=0.05),
        SamplingParams(temperature=0.5, top_k=1000, min_p=0.2),  # more than the groups: every token ranked
        SamplingParams(temperature=1.0),  # the whole vocabulary
        SamplingParams(temperature=0.3),
    ],
    ids=["top-k", "top-k top-p", "top-k top-p min-p", "top-k 1000 min-p", "temperature 1", "temperature 0.3"],
)
def test_it_draws_from_llama_cpps_distribution(sampling: SamplingParams) -> None:
    assert handles(sampling)
    values = logits()
    expected = chain_distribution(values, sampling)
    drawn = draws(values, sampling)
    assert set(drawn.tolist()) <= set(expected), "a token outside llama.cpp's candidates"
    counts = np.bincount(drawn, minlength=VOCAB) / DRAWS
    likeliest = sorted(expected.items(), key=lambda item: -item[1])
    # The likeliest tokens one by one, and the share of the 50 likeliest, within five standard deviations.
    for token, p in likeliest[:10]:
        assert abs(counts[token] - p) <= 5 * np.sqrt(p * (1 - p) / DRAWS) + 1e-9, (token, p, counts[token])
    share = min(sum(p for _, p in likeliest[:50]), 1.0)
    drawn_share = sum(counts[token] for token, _ in likeliest[:50])
    assert abs(drawn_share - share) <= 5 * np.sqrt(share * (1 - share) / DRAWS) + 1e-9, (share, drawn_share)


def every_third(values: np.ndarray) -> np.ndarray:
    return np.arange(VOCAB) % 3 == 0


def few_likely(values: np.ndarray) -> np.ndarray:
    """The 10 likeliest tokens and every 1000th: fewer than top-k among the likeliest scanned."""
    allowed = np.arange(VOCAB) % 1000 == 0
    allowed[np.argsort(-values)[:10]] = True
    return allowed


@pytest.mark.parametrize(
    ("sampling", "grammar"),
    [
        (SamplingParams(temperature=1.0, top_k=40), every_third),
        (SamplingParams(temperature=0.7, top_k=64, top_p=0.95, min_p=0.05), every_third),
        (SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05), few_likely),  # min-p decides
    ],
    ids=["top-k, every third", "top-k top-p min-p, every third", "top-k top-p min-p, few likely"],
)
def test_under_a_grammar_it_draws_from_llama_cpps_grammar_first_distribution(sampling, grammar) -> None:
    """llama.cpp's chain with the grammar first is the chain over logits whose refused tokens are
    -inf; the sampler has the grammar check only the likeliest."""
    values = logits()
    allowed = grammar(values)
    expected = chain_distribution(np.where(allowed, values, -np.inf).astype(np.float32), sampling)
    scratch = Scratch.for_vocabulary(VOCAB)
    sampler = VocabSampler(lc, scratch, sampling, 1, fallback=None)
    scratch.padded[:VOCAB] = values
    drawn = np.array([sampler.draw_allowed(lambda tokens: allowed[tokens]) for _ in range(DRAWS)])
    assert None not in drawn.tolist() and set(drawn.tolist()) <= set(expected)
    counts = np.bincount(drawn.astype(int), minlength=VOCAB) / DRAWS
    for token, p in sorted(expected.items(), key=lambda item: -item[1])[:10]:
        assert abs(counts[token] - p) <= 5 * np.sqrt(p * (1 - p) / DRAWS) + 1e-9, (token, p, counts[token])
    greedy = VocabSampler(lc, scratch, SamplingParams(temperature=0.0), 1, fallback=None)
    assert greedy.draw_allowed(lambda tokens: allowed[tokens]) == max(expected, key=lambda token: values[token])


def test_under_a_grammar_what_the_likeliest_cannot_decide_goes_to_llama_cpp() -> None:
    values, scratch = logits(), Scratch.for_vocabulary(VOCAB)
    scratch.padded[:VOCAB] = values
    allowed = few_likely(values)
    no_min_p = VocabSampler(lc, scratch, SamplingParams(temperature=0.8, top_k=40), 1, fallback=None)
    assert no_min_p.draw_allowed(lambda tokens: allowed[tokens]) is None  # top-k's rest could be drawn
    assert no_min_p.draw_allowed(lambda tokens: np.zeros(len(tokens), dtype=bool)) is None  # none passes


def test_a_wrong_filter_would_be_caught() -> None:
    """The check above can fail: top-p's cut changes the distribution beyond its tolerance."""
    values = logits(spread=1.0)
    cut = chain_distribution(values, SamplingParams(temperature=1.0, top_k=100, top_p=0.3))
    drawn = draws(values, SamplingParams(temperature=1.0, top_k=100))
    assert not set(drawn.tolist()) <= set(cut)


def test_greedy_is_the_first_largest_logit() -> None:
    values = logits()
    values[[5, 700]] = values.max() + 1  # a tie: llama.cpp's greedy keeps the first
    pointer = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    # llama.cpp's logits at any batch position: this array
    fake = type("Lib", (), {"llama_get_logits_ith": staticmethod(lambda ctx, index: pointer)})
    scratch = Scratch.for_vocabulary(VOCAB)
    sampler = VocabSampler(fake, scratch, SamplingParams(temperature=0.0), seed=1, fallback=None)
    assert sampler.sample(None, 0) == 5


def test_the_same_seed_draws_the_same_tokens() -> None:
    values, sampling = logits(), SamplingParams(temperature=1.0, top_k=64, top_p=0.95)
    assert (draws(values, sampling, seed=7, count=50) == draws(values, sampling, seed=7, count=50)).all()
    assert (draws(values, sampling, seed=7, count=50) != draws(values, sampling, seed=8, count=50)).any()


def test_logits_that_are_not_finite_go_to_llama_cpp() -> None:
    values = logits()
    values[3] = np.nan
    scratch = Scratch.for_vocabulary(VOCAB)
    sampler = VocabSampler(lc, scratch, SamplingParams(temperature=1.0, top_k=10), 1, fallback=None)
    scratch.padded[:VOCAB] = values
    assert sampler.draw() is None


@pytest.mark.parametrize(
    ("sampling", "handled"),
    [
        (SamplingParams(temperature=0.0, top_p=0.5), True),  # greedy ignores the filters
        (SamplingParams(temperature=0.7, top_k=64, top_p=0.95), True),
        (SamplingParams(temperature=0.7), True),
        (SamplingParams(temperature=0.7, top_p=0.9), False),  # a sort of the whole vocabulary
        (SamplingParams(temperature=0.7, min_p=0.1), False),
        (SamplingParams(temperature=0.7, top_k=5000), False),
        (SamplingParams(temperature=0.7, top_k=40, repeat_penalty=1.1), False),  # penalties keep a history
        (SamplingParams(temperature=0.7, top_k=40, presence_penalty=0.5), False),
    ],
)
def test_what_stays_with_llama_cpps_chain(sampling: SamplingParams, handled: bool) -> None:
    assert handles(sampling) is handled
