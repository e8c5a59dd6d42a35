"""`logprobs` through the official openai SDK, from the real Gemma 3 270M (gguf and transformers)."""

from __future__ import annotations

import math

import openai
import pytest

from tests.conftest import GEMMA


@pytest.mark.parametrize("model", [GEMMA, "gemma-hf"])
async def test_chat_logprobs_with_top_logprobs(client: openai.AsyncOpenAI, model: str) -> None:
    response = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = response.choices[0]
    content = choice.logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(t.token for t in content) == choice.message.content
    for token in content:
        assert token.logprob <= 0
        assert bytes(token.bytes).decode("utf-8", errors="replace") == token.token
        assert len(token.top_logprobs) == 3
        assert token.token in [t.token for t in token.top_logprobs]  # greedy: the chosen one is the most likely
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)
        assert sum(math.exp(t.logprob) for t in token.top_logprobs) <= 1 + 1e-6


async def test_streamed_chat_logprobs_cover_every_token(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=10,
        temperature=0.7,
        seed=3,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(tokens) == chunks[-1].usage.completion_tokens
    assert "".join(t.token for t in tokens) == text
    assert all(t.logprob <= 0 and t.top_logprobs == [] for t in tokens)


async def test_completion_logprobs_in_the_legacy_shape(client: openai.AsyncOpenAI) -> None:
    response = await client.completions.create(
        model=GEMMA, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0, logprobs=2
    )
    choice = response.choices[0]
    logprobs = choice.logprobs
    assert "".join(logprobs.tokens) == choice.text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == 6
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(
        len(top) <= 2 and token in top for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True)
    )
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(6)]

    stream = await client.completions.create(
        model=GEMMA, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0, logprobs=2, stream=True
    )
    streamed = [c.choices[0].logprobs async for c in stream if c.choices and c.choices[0].logprobs]
    assert [t for lp in streamed for t in lp.tokens] == logprobs.tokens
    assert [o for lp in streamed for o in lp.text_offset] == logprobs.text_offset


async def test_logprobs_where_they_cannot_be_given_are_a_clear_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:  # the mock backend has no logits
        await client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "hi"}], logprobs=True, max_tokens=2
        )
    assert refused.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model=GEMMA, messages=[{"role": "user", "content": "hi"}], top_logprobs=2, max_tokens=2
        )
    assert refused.value.body["param"] == "top_logprobs"
    for bad in ({"logprobs": 21}, {"logprobs": -1}):
        with pytest.raises(openai.BadRequestError):
            await client.completions.create(model=GEMMA, prompt="hi", max_tokens=2, **bad)


async def test_echo_with_logprobs_scores_the_prompt(client: openai.AsyncOpenAI) -> None:
    """What evaluation harnesses send (lm-evaluation-harness' local-completions loglikelihood)."""
    prompt = "The capital of France is Paris"
    response = await client.completions.create(
        model="gemma-batched", prompt=prompt, max_tokens=1, temperature=0, echo=True, logprobs=1
    )
    choice = response.choices[0]
    logprobs = choice.logprobs
    assert choice.text.startswith(prompt)
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # nothing before it
    scored = logprobs.token_logprobs[1:]
    assert len(scored) == len(logprobs.tokens) - 1 and all(lp <= 0 for lp in scored)
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]
    # " Paris" after "The capital of France is" is far likelier than a word out of nowhere.
    paris = logprobs.tokens.index(" Paris")
    assert logprobs.token_logprobs[paris] > -5
    unlikely = await client.completions.create(
        model="gemma-batched",
        prompt="The capital of France is Banana",
        max_tokens=1,
        temperature=0,
        echo=True,
        logprobs=1,
    )
    assert unlikely.choices[0].logprobs.token_logprobs[-2] < logprobs.token_logprobs[paris]

    stream = await client.completions.create(
        model="gemma-batched", prompt=prompt, max_tokens=1, temperature=0, echo=True, logprobs=1, stream=True
    )
    chunks = [c.choices[0] async for c in stream if c.choices]
    assert chunks[0].text == prompt and chunks[0].logprobs.token_logprobs[1:] == pytest.approx(
        scored[: len(chunks[0].logprobs.tokens) - 1]
    )


async def test_scoring_a_prompt_needs_a_batching_model(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="n_parallel"):
        await client.completions.create(model=GEMMA, prompt="hi", max_tokens=1, echo=True, logprobs=1)
    with pytest.raises(openai.BadRequestError, match="score a prompt"):
        await client.completions.create(model="gemma-hf", prompt="hi", max_tokens=1, echo=True, logprobs=1)
