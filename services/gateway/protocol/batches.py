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
from typing import Annotated, Any, Literal

from google.protobuf import json_format
from pydantic import Field, StringConstraints, ValidationError

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from services.common.errors import InvalidArgument, MeshError, quote
from services.common.rate_limits import RateLimits
from services.embeddings.client import EmbedResult
from services.gateway.admission import DOORS, admit, check_text
from services.gateway.auth import Caller
from services.gateway.config import GatewaySettings
from services.gateway.errors import error_body
from services.gateway.protocol.chat import ChatCompletionRequest, chat_completion_body
from services.gateway.protocol.common import OpenAIModel, new_id, usage_body
from services.gateway.protocol.completions import CompletionRequestIn, completion_body
from services.gateway.protocol.embeddings import EmbeddingsRequestIn, embeddings_body
from services.inference.api import Completed
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


# OpenAI's bounds on a batch's metadata: 16 pairs, keys of 64 characters, values of 512.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class BatchCreateIn(OpenAIModel):
    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Endpoint
    completion_window: Literal["24h"] = "24h"
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)


def check_input_lines(data: bytes, max_lines: int, max_line_bytes: int) -> list[BatchLineIn]:
    """The lines of a batch input file (JSON Lines: split on "\n" only, as the spec says; a
    U+2028 inside a string is text), each in OpenAI's request-line shape and no longer than its
    endpoint's body limit. Blocking: run it in a thread."""
    parsed: list[BatchLineIn] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        if len(line) > max_line_bytes:
            raise InvalidArgument(
                f"Line {number} is {len(line)} bytes; a request takes at most {max_line_bytes}.", param="file"
            )
        if len(parsed) == max_lines:
            raise InvalidArgument(f"A batch input file holds at most {max_lines} requests.", param="file")
        try:  # the stdlib parser, as the HTTP doors parse bodies: text rules are admission's
            parsed.append(BatchLineIn.model_validate(json.loads(line.decode("utf-8"))))
        except ValidationError as error:
            raise InvalidArgument(f"Line {number}: {_first_problem(error)}", param="file") from None
        except UnicodeDecodeError:
            raise InvalidArgument(f"Line {number}: a batch input file must be UTF-8 JSONL.", param="file") from None
        except (ValueError, RecursionError):
            raise InvalidArgument(f"Line {number} is not valid JSON.", param="file") from None
    if not parsed:
        raise InvalidArgument("The batch input file holds no requests.", param="file")
    return parsed


def prepare_items(
    lines: list[BatchLineIn], endpoint: str, caller: Caller, settings: GatewaySettings
) -> tuple[list[pb.BatchItem], RateLimits]:
    """Each line as the request its endpoint would make of it, admitted through the batch-line
    door of its endpoint; a 4xx names the first bad line. Also the key's rate limits, which the
    scheduler applies as the lines run. Blocking: run it in a thread."""
    items, seen, limits = [], set(), RateLimits()
    for number, line in enumerate(lines, 1):
        try:
            if line.url != endpoint:
                raise InvalidArgument(f"'url' is {quote(line.url)}; this batch's endpoint is {endpoint}.")
            if line.custom_id in seen:
                raise InvalidArgument(f"custom_id '{quote(line.custom_id)}' is used twice.")
            seen.add(line.custom_id)
            item, limits = _item(line, caller, settings)
            items.append(item)
        except ValidationError as error:
            raise InvalidArgument(f"Line {number}: {_first_problem(error, 'body')}", param="input_file_id") from None
        except MeshError as error:
            raise type(error)(
                f"Line {number}: {error.message}",
                reason=error.reason,
                param="input_file_id",
                retry_after_seconds=error.retry_after_seconds,
            ) from None
    return items, limits


def _item(line: BatchLineIn, caller: Caller, settings: GatewaySettings) -> tuple[pb.BatchItem, RateLimits]:
    item = pb.BatchItem(custom_id=line.custom_id)
    door = DOORS[f"batch_line:{line.url}"]
    check_text(line.custom_id, "custom_id")
    if line.url == "/v1/embeddings":
        embed = EmbeddingsRequestIn.model_validate(line.body)
        limits = admit(caller, door, embed, [embed.model])
        item.embed.CopyFrom(embed.to_domain().to_pb())
        return item, limits
    body: ChatCompletionRequest | CompletionRequestIn
    if line.url == "/v1/chat/completions":
        body = ChatCompletionRequest.model_validate(line.body)
    else:
        body = CompletionRequestIn.model_validate(line.body)
    if body.stream or body.n != 1:
        raise InvalidArgument("Batch requests take neither 'stream' nor 'n' > 1.")
    limits = admit(caller, door, body, [body.model])
    body.check_limits(settings)
    if isinstance(body, ChatCompletionRequest):
        item.chat.CopyFrom(body.to_domain(max_choices=1)[0].to_pb())
        return item, limits
    prompts = body.to_domain(max_choices=1)  # one per prompt: more are refused past max_choices
    item.complete.CopyFrom(prompts[0].to_pb())
    return item, limits


def _first_problem(error: ValidationError, within: str = "") -> str:
    """`where: what` of the first problem (just `what` for the line itself)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in (within, *first["loc"]) if part != "")
    return f"{where}: {first['msg']}" if where else first["msg"]


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
    lines = [line for part in parts for line in part.decode().split("\n") if line]
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
            code = failure.code.lower() or None  # the code the same request over HTTP is answered with
            body = error_body(failure.status_code, failure.message, param=failure.param or None, code=code)
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
