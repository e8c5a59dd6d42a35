"""The llama.cpp backend on the real Gemma 3 270M model."""

import contextlib
import math

import pytest

from services.common.errors import InvalidArgument
from services.inference.api import ChatMessage, FinishReason, Role, SamplingParams
from services.inference.backends.gguf import usable_cores
from services.inference.generation import GenerationRequest
from services.inference.server.server import InferenceServer
from tests.conftest import GEMMA, loaded_backend, wait_until_idle


@pytest.fixture
async def gemma(inference: InferenceServer):
    return await loaded_backend(inference, GEMMA)


async def generate(backend, **request) -> tuple[str, object]:
    chunks = [c async for c in backend.generate_stream(GenerationRequest(request_id="t", **request))]
    return "".join(c.text for c in chunks), chunks[-1]


async def test_chat_generates_real_text_with_usage(gemma) -> None:
    text, last = await generate(
        gemma,
        messages=(ChatMessage(Role.USER, "Name three colours."),),
        sampling=SamplingParams(max_tokens=12, temperature=0.0),
    )
    assert text.strip()
    assert "<end_of_turn>" not in text
    assert last.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert last.usage.prompt_tokens > 5
    assert 0 < last.usage.completion_tokens <= 12


async def test_max_tokens_gives_length(gemma) -> None:
    _, last = await generate(gemma, prompt="1, 2, 3, 4,", sampling=SamplingParams(max_tokens=5, temperature=0.0))
    assert last.finish_reason is FinishReason.LENGTH
    assert last.usage.completion_tokens == 5


async def test_same_seed_same_text(gemma) -> None:
    sampling = SamplingParams(max_tokens=10, temperature=1.0, seed=7)
    first, _ = await generate(gemma, prompt="Once upon a time", sampling=sampling)
    second, _ = await generate(gemma, prompt="Once upon a time", sampling=sampling)
    assert first == second


async def test_stop_sequence_ends_generation_and_is_not_returned(gemma) -> None:
    text, last = await generate(
        gemma, prompt="1, 2, 3, 4,", sampling=SamplingParams(max_tokens=30, temperature=0.0, stop=("7",))
    )
    assert "7" not in text
    assert last.finish_reason is FinishReason.STOP


async def test_prompt_over_the_context_window_is_invalid_argument(gemma) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await generate(gemma, prompt="word " * 5000, sampling=SamplingParams(max_tokens=1))
    assert raised.value.param == "prompt"


async def test_closing_the_stream_stops_generation_within_one_token(gemma) -> None:
    stream = gemma.generate_stream(
        GenerationRequest(
            request_id="cancel-me", prompt="1, 2, 3, 4,", sampling=SamplingParams(max_tokens=400, temperature=0.0)
        )
    )
    async with contextlib.aclosing(stream):
        await anext(stream)
        generated_at_close = gemma.stats.tokens_generated
    await wait_until_idle(gemma)
    assert gemma.stats.tokens_generated - generated_at_close <= 1


def test_usable_cores_respect_a_cgroup_cpu_limit(tmp_path) -> None:
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(cpu_max) >= 1  # no cgroup file: the affinity mask
    everything = usable_cores(cpu_max)
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == everything
    cpu_max.write_text("100000 100000\n")  # a limit of one CPU
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text("50000 100000\n")  # half a CPU still runs one thread
    assert usable_cores(cpu_max) == 1


async def test_logprobs_are_the_models_own_and_rank_the_greedy_choice_first(gemma) -> None:
    request = GenerationRequest(
        request_id="t", prompt="1, 2, 3, 4,", sampling=SamplingParams(max_tokens=8, temperature=0.0), logprobs=3
    )
    chunks = [c async for c in gemma.generate_stream(request)]
    logprobs = [entry for chunk in chunks for entry in chunk.logprobs]
    assert len(logprobs) == chunks[-1].usage.completion_tokens == 8
    assert "".join(entry.token for entry in logprobs) == "".join(c.text for c in chunks)
    for entry in logprobs:
        assert entry.logprob <= 0 and len(entry.top) == 3
        assert entry.top[0].token_bytes == entry.token_bytes  # greedy: the most likely token was chosen
        assert entry.top[0].logprob == pytest.approx(entry.logprob)
        assert [a.logprob for a in entry.top] == sorted((a.logprob for a in entry.top), reverse=True)
        assert sum(math.exp(a.logprob) for a in entry.top) <= 1.0 + 1e-6
    # Each "," after a digit is near-certain in a counting sequence.
    assert max(e.logprob for e in logprobs if e.token == ",") > -0.5


async def test_a_matched_stop_sequence_has_no_logprobs(gemma) -> None:
    sampling = SamplingParams(max_tokens=30, temperature=0.0, stop=("7",))
    request = GenerationRequest(request_id="t", prompt="1, 2, 3, 4,", sampling=sampling, logprobs=0)
    chunks = [c async for c in gemma.generate_stream(request)]
    logprobs = [entry for chunk in chunks for entry in chunk.logprobs]
    assert "".join(entry.token for entry in logprobs) == "".join(c.text for c in chunks)
    assert all(not entry.top for entry in logprobs)
