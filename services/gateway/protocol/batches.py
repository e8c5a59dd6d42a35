"""/v1/batches: the input file's lines translated into batch items, the batch object, and the
results rendered as OpenAI's output and error files.

The gateway is the one translation between HTTP and the mesh's contracts, for batches too:
each input line is validated and mapped here, exactly as the same request sent to its
endpoint would be, and each result is rendered by the same body builders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any, Literal

from google.protobuf import json_format
from pydantic import Field, ValidationError

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from services.common.errors import InvalidArgument
from services.embeddings.client import EmbedResult
from services.gateway.auth import Caller
from services.gateway.config import GatewaySettings
from services.gateway.errors import error_body
from services.gateway.protocol.chat import ChatCompletionRequest, chat_completion_body
from services.gateway.protocol.common import OpenAIModel, new_id, usage_body
from services.gateway.protocol.completions import CompletionRequestIn, completion_body
from services.gateway.protocol.embeddings import EmbeddingsRequestIn, embeddings_body
from services.inference.client import Completed
from services.scheduler.client import Job, JobState

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
MAX_CUSTOM_ID = 512
# A cancelled batch's runner saves what it finished just after the cancel: its files are
# written once this long has passed (until then the batch is "cancelling").
CANCEL_SETTLE_SECONDS = 5


class BatchLineIn(OpenAIModel):
    custom_id: str = Field(min_length=1, max_length=MAX_CUSTOM_ID)
    method: Literal["POST"]
    url: str
    body: dict[str, Any]


class BatchCreateIn(OpenAIModel):
    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Endpoint
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = Field(None, max_length=16)


def check_input_lines(data: bytes, max_lines: int) -> list[BatchLineIn]:
    """The lines of a batch input file (JSONL), each in OpenAI's request-line shape."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("A batch input file must be UTF-8 JSONL.", param="file") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise InvalidArgument("The batch input file holds no requests.", param="file")
    if len(lines) > max_lines:
        raise InvalidArgument(f"A batch input file holds at most {max_lines} requests.", param="file")
    parsed = []
    for number, line in lines:
        try:
            parsed.append(BatchLineIn.model_validate_json(line))
        except ValidationError as error:
            raise InvalidArgument(f"Line {number}: {_first_problem(error)}", param="file") from None
    return parsed


def prepare_items(
    lines: list[BatchLineIn], endpoint: str, caller: Caller, settings: GatewaySettings
) -> list[pb.BatchItem]:
    """Each line as the request its endpoint would make of it: a 400 names the first bad line."""
    items, seen = [], set()
    for number, line in enumerate(lines, 1):
        if line.url != endpoint:
            raise InvalidArgument(f"Line {number}: 'url' is {line.url}; this batch's endpoint is {endpoint}.")
        if line.custom_id in seen:
            raise InvalidArgument(f"Line {number}: custom_id '{line.custom_id}' is used twice.")
        seen.add(line.custom_id)
        try:
            items.append(_item(line, caller, settings))
        except ValidationError as error:
            raise InvalidArgument(f"Line {number}: body.{_first_problem(error)}", param="input_file_id") from None
        except InvalidArgument as error:
            raise InvalidArgument(f"Line {number}: {error.message}", param="input_file_id") from None
    return items


def _item(line: BatchLineIn, caller: Caller, settings: GatewaySettings) -> pb.BatchItem:
    item = pb.BatchItem(custom_id=line.custom_id)
    if line.url == "/v1/embeddings":
        embed = EmbeddingsRequestIn.model_validate(line.body)
        caller.require_model(embed.model)
        item.embed.CopyFrom(embed.to_domain().to_pb())
        return item
    body: ChatCompletionRequest | CompletionRequestIn
    if line.url == "/v1/chat/completions":
        body = ChatCompletionRequest.model_validate(line.body)
    else:
        body = CompletionRequestIn.model_validate(line.body)
    if body.stream or body.n != 1:
        raise InvalidArgument("Batch requests take neither 'stream' nor 'n' > 1.")
    caller.require_model(body.model)
    body.check_limits(settings)
    if isinstance(body, ChatCompletionRequest):
        item.chat.CopyFrom(body.to_domain(max_choices=1)[0].to_pb())
        return item
    prompts = body.to_domain(max_choices=1)  # one per prompt: more are refused past max_choices
    item.complete.CopyFrom(prompts[0].to_pb())
    return item


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"


# ---- the batch object ----

_STATUS = {
    JobState.QUEUED: "validating",
    JobState.RUNNING: "in_progress",
    JobState.SUCCEEDED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
    JobState.EXPIRED: "expired",
}


def settled(job: Job) -> bool:
    """Whether the batch's results are final: done, or cancelled long enough ago."""
    if job.state is JobState.CANCELLED:
        return job.ended_at is not None and time.time() - job.ended_at.timestamp() >= CANCEL_SETTLE_SECONDS
    return job.state.terminal


def batch_body(job: Job, output_file_id: str | None, error_file_id: str | None, counts: tuple[int, int]) -> dict:
    """OpenAI's batch object. `counts`: (completed, failed) requests."""
    request = job.request.batch
    status = _STATUS[job.state]
    if job.state is JobState.CANCELLED and not settled(job):
        status = "cancelling"

    def seconds(value: Any) -> int | None:
        return int(value.timestamp()) if value is not None else None

    ended = seconds(job.ended_at)
    return {
        "id": job.job_id,
        "object": "batch",
        "endpoint": request.endpoint,
        "errors": {"object": "list", "data": [{"code": "batch_failed", "message": job.error}]} if job.error else None,
        "input_file_id": request.input_file_id,
        "completion_window": request.completion_window,
        "status": status,
        "output_file_id": output_file_id,
        "error_file_id": error_file_id,
        "created_at": seconds(job.created_at),
        "in_progress_at": seconds(job.started_at),
        "expires_at": seconds(job.expires_at),
        "finalizing_at": ended if job.state is JobState.SUCCEEDED else None,
        "completed_at": ended if job.state is JobState.SUCCEEDED else None,
        "failed_at": ended if job.state is JobState.FAILED else None,
        "expired_at": ended if job.state is JobState.EXPIRED else None,
        "cancelling_at": ended if job.state is JobState.CANCELLED else None,
        "cancelled_at": ended if job.state is JobState.CANCELLED and status == "cancelled" else None,
        "request_counts": {"total": request.item_count, "completed": counts[0], "failed": counts[1]},
        "metadata": dict(request.metadata) or None,
    }


def progress_counts(job: Job) -> tuple[int, int]:
    """(completed, failed) as the running job last reported them."""
    if job.result is not None and job.result.HasField("batch"):
        return job.result.batch.completed, job.result.batch.failed
    metrics = job.progress.metrics if job.progress is not None else {}
    return int(metrics.get("completed", 0)), int(metrics.get("failed", 0))


# ---- the output and error files ----


def parse_results(parts: list[bytes]) -> list[pb.BatchItemResult]:
    lines = [line for part in parts for line in part.decode().splitlines() if line]
    results = {r.index: r for r in (json_format.Parse(line, pb.BatchItemResult()) for line in lines)}
    return [results[index] for index in sorted(results)]


def render_results(batch_id: str, results: list[pb.BatchItemResult]) -> tuple[bytes, bytes]:
    """OpenAI's output file (answered requests) and error file (failed ones), in input order."""
    output, errors = [], []
    for result in results:
        line_id = "batch_req_" + hashlib.sha256(f"{batch_id}:{result.index}".encode()).hexdigest()[:24]
        outcome = result.WhichOneof("outcome")
        if outcome == "error":
            failure = result.error
            body = error_body(failure.status_code, failure.message, param=failure.param or None)
            response = {"status_code": failure.status_code, "request_id": line_id, "body": body}
            errors.append({"id": line_id, "custom_id": result.custom_id, "response": response, "error": None})
            continue
        response = {"status_code": 200, "request_id": line_id, "body": _response_body(result)}
        output.append({"id": line_id, "custom_id": result.custom_id, "response": response, "error": None})
    return _jsonl(output), _jsonl(errors)


def _response_body(result: pb.BatchItemResult) -> dict[str, Any]:
    if result.HasField("embed"):
        embedded = EmbedResult.from_pb(result.embed)
        vectors = [e.vector for e in embedded.embeddings]
        return embeddings_body(embedded.model, embedded.prompt_tokens, vectors, "float")
    if result.HasField("chat"):
        completed = Completed.from_pb(result.chat)
        usage = usage_body([completed.usage], 1)
        chat = chat_completion_body(new_id("chatcmpl"), completed.model, [completed], usage, bool(completed.logprobs))
        return chat.model_dump(mode="json")
    # The line's body echoes no prompt, so it carries no scored prompt either.
    completed = dataclasses.replace(Completed.from_pb(result.complete), prompt_logprobs=())
    usage = usage_body([completed.usage], 1)
    body = completion_body(new_id("cmpl"), completed.model, [completed], [""], usage, bool(completed.logprobs))
    return body.model_dump(mode="json")


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
