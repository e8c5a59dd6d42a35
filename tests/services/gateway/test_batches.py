"""The Files and Batch APIs through the official openai SDK, answered by the real Gemma 3 270M
and all-MiniLM-L6-v2, with the scheduler running the batches and S3 holding the files."""

from __future__ import annotations

import asyncio
import io
import json

import jsonschema
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from tests.conftest import GEMMA

# OpenAI's documented batch output line (https://platform.openai.com/docs/guides/batch).
OUTPUT_LINE = {
    "type": "object",
    "required": ["id", "custom_id", "response", "error"],
    "properties": {
        "id": {"type": "string", "pattern": "^batch_req_"},
        "custom_id": {"type": "string"},
        "error": {"type": "null"},
        "response": {
            "type": "object",
            "required": ["status_code", "request_id", "body"],
            "properties": {"status_code": {"type": "integer"}, "request_id": {"type": "string"}},
        },
    },
}


def jsonl(lines: list[dict]) -> io.BytesIO:
    data = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    data.name = "input.jsonl"
    return data


def chat_line(custom_id: str, content: str, model: str = GEMMA, **body: object) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


async def until_settled(client: openai.AsyncOpenAI, batch_id: str, timeout: float = 180) -> object:
    async with asyncio.timeout(timeout):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "cancelled", "expired"):
                return batch
            await asyncio.sleep(0.25)


async def output_lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def test_a_chat_batch_is_answered_line_by_line_by_the_real_model(client: openai.AsyncOpenAI) -> None:
    questions = ["What is 2 + 2?", "Name a colour.", "Say hello.", "What is the capital of France?"]
    lines = [chat_line(f"q-{i}", q, max_tokens=8, temperature=0) for i, q in enumerate(questions)]
    lines.append(chat_line("missing-model", "hi", model="no-such-model", max_tokens=4))
    lines.append(chat_line("scored", "Count: 1, 2,", max_tokens=3, temperature=0, logprobs=True, top_logprobs=2))
    uploaded = await client.files.create(file=jsonl(lines), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0 and uploaded.filename == "input.jsonl"

    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"purpose": "test"},
    )
    assert batch.status in ("validating", "in_progress") and batch.request_counts.total == 6
    done = await until_settled(client, batch.id)
    assert done.status == "completed" and done.metadata == {"purpose": "test"}
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 5, 1)

    answered = await output_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in answered] == ["q-0", "q-1", "q-2", "q-3", "scored"]  # input order
    for line in answered:
        jsonschema.validate(line, OUTPUT_LINE)
        assert line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])  # the SDK's own type
        assert completion.choices[0].message.content.strip()
        assert 0 < completion.usage.completion_tokens <= 8
    scored = ChatCompletion.model_validate(answered[-1]["response"]["body"]).choices[0].logprobs.content
    assert scored and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in scored)

    (failed,) = await output_lines(client, done.error_file_id)
    jsonschema.validate(failed, OUTPUT_LINE)
    assert failed["custom_id"] == "missing-model" and failed["response"]["status_code"] == 404
    assert "no-such-model" in failed["response"]["body"]["error"]["message"]

    again = await client.batches.retrieve(batch.id)  # the files are written once
    assert (again.output_file_id, again.error_file_id) == (done.output_file_id, done.error_file_id)
    listed = [b.id async for b in client.batches.list(limit=100)]
    assert batch.id in listed
    output_file = await client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"


async def test_an_embeddings_batch(client: openai.AsyncOpenAI) -> None:
    lines = [
        {
            "custom_id": f"e-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "all-MiniLM-L6-v2", "input": text},
        }
        for i, text in enumerate(["a cat", "a dog", "the stock market"])
    ]
    uploaded = await client.files.create(file=jsonl(lines), purpose="batch")
    batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    done = await until_settled(client, batch.id)
    answered = await output_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in answered] == ["e-0", "e-1", "e-2"]
    vectors = [CreateEmbeddingResponse.model_validate(line["response"]["body"]).data[0].embedding for line in answered]
    assert all(len(vector) == 384 for vector in vectors)


async def test_a_completions_batch(client: openai.AsyncOpenAI) -> None:
    lines = [
        {
            "custom_id": f"p-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": GEMMA, "prompt": p, "max_tokens": 4, "temperature": 0},
        }
        for i, p in enumerate(["1, 2, 3,", "a, b, c,"])
    ]
    uploaded = await client.files.create(file=jsonl(lines), purpose="batch")
    batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
    done = await until_settled(client, batch.id)
    answered = await output_lines(client, done.output_file_id)
    completions = [Completion.model_validate(line["response"]["body"]) for line in answered]
    assert [c.object for c in completions] == ["text_completion"] * 2
    assert all(c.choices[0].text and c.usage.completion_tokens <= 4 for c in completions)


async def test_a_batch_cancelled_halfway_keeps_what_it_finished(client: openai.AsyncOpenAI) -> None:
    lines = [chat_line(f"c-{i}", f"Write a long story number {i}.", max_tokens=48) for i in range(12)]
    uploaded = await client.files.create(file=jsonl(lines), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    async with asyncio.timeout(120):
        while (await client.batches.retrieve(batch.id)).request_counts.completed < 2:
            await asyncio.sleep(0.25)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = await until_settled(client, batch.id)
    assert done.status == "cancelled"
    answered = await output_lines(client, done.output_file_id)
    assert 2 <= len(answered) < 12 == done.request_counts.total
    assert len(answered) == done.request_counts.completed
    assert len({line["custom_id"] for line in answered}) == len(answered)


async def test_files_and_batches_are_their_owners_alone(gateway_url: str, make_key) -> None:
    alice = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=await make_key(["jobs", "chat"]), max_retries=0)
    bob = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=await make_key(["jobs", "chat"]), max_retries=0)
    uploaded = await alice.files.create(file=jsonl([chat_line("x", "hi", max_tokens=2)]), purpose="batch")
    batch = await alice.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        bob.files.retrieve(uploaded.id),
        bob.files.content(uploaded.id),
        bob.files.delete(uploaded.id),
        bob.batches.retrieve(batch.id),
        bob.batches.cancel(batch.id),
        bob.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    assert uploaded.id not in [f.id async for f in bob.files.list()]
    assert uploaded.id in [f.id async for f in alice.files.list()]
    await until_settled(alice, batch.id)
    assert (await alice.files.delete(uploaded.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await alice.files.retrieve(uploaded.id)


async def test_files_page_by_after_in_either_order(gateway_url: str, make_key) -> None:
    """The OpenAI SDK's auto-paging follows `after` through the caller's files, newest first or
    (order=asc) oldest first; an `after` that names none of them is a 400, not an empty page."""
    owner = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key=await make_key(["jobs"]), max_retries=0)
    uploaded = [
        (await owner.files.create(file=jsonl([chat_line(str(n), "hi", max_tokens=2)]), purpose="batch")).id
        for n in range(3)
    ]
    assert [f.id async for f in owner.files.list(limit=1)] == uploaded[::-1]
    assert [f.id async for f in owner.files.list(limit=2, order="asc")] == uploaded
    with pytest.raises(openai.BadRequestError, match="'after'"):
        await owner.files.list(after="file-not-mine")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not json\n", "Line 1"),
        (b"\xff\xfe", "UTF-8"),
        (b"\n\n", "no requests"),
        (json.dumps({"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}).encode(), "Line 1"),
    ],
)
async def test_a_bad_batch_file_is_refused_at_upload(client: openai.AsyncOpenAI, content: bytes, problem: str) -> None:
    data = io.BytesIO(content)
    data.name = "bad.jsonl"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.files.create(file=data, purpose="batch")
    assert problem in refused.value.body["message"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({**chat_line("a", "hi"), "url": "/v1/embeddings"}, "endpoint"),
        (chat_line("a", "hi", stream=True), "stream"),
        (chat_line("a", "hi", max_tokens=0), "max_tokens"),
        (chat_line("a", "hi", logprobs=True, top_logprobs=99), "top_logprobs"),
    ],
)
async def test_a_bad_request_line_is_refused_when_the_batch_is_created(
    client: openai.AsyncOpenAI, line: dict, problem: str
) -> None:
    uploaded = await client.files.create(file=jsonl([chat_line("ok", "hi"), line]), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    message = refused.value.body["message"]
    assert message.startswith("Line 2") and problem in message


async def test_duplicate_custom_ids_and_other_purposes_are_refused(client: openai.AsyncOpenAI) -> None:
    uploaded = await client.files.create(file=jsonl([chat_line("same", "a"), chat_line("same", "b")]), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="used twice"):
        await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    other = await client.files.create(file=jsonl([chat_line("a", "b")]), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        await client.batches.create(input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_nope")
