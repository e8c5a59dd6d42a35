"""Batch jobs: many requests from one uploaded file, run at low priority, with checkpoints.

The gateway has already translated the caller's JSONL into BatchItems (one protobuf JSON
line each) in the file store. A run answers the items a few at a time; chat and completion
items are low-priority requests, which batching engines pause while interactive requests
run. Every few seconds the results so far are written as the next numbered part of the
request's results_object (FileStore.put_part), atomically: a redelivered job (a worker killed, a
shutdown) reads the parts back and answers only what no part holds, so each item appears
exactly once in the output however often the job restarts. An item's own failure (a bad
request) is its result. An outage of the service it needs (UNAVAILABLE and the like) is
retried a few times; if other items were answered meanwhile, the item itself is the problem
and its failure is its result; if not, the service is down, and the attempt fails, after
saving what is done, so that the job is retried with backoff and resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable

from google.protobuf import json_format

from llmmesh.inference.v1 import inference_service_pb2 as inference_pb
from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from services.common.errors import InvalidArgument, MeshError, http_status
from services.common.files import FileStore
from services.embeddings.client import EmbeddingsClient, EmbedRequest
from services.fleet.client import FleetClient
from services.inference.api import ChatMessage, ChatRequest, Completed, CompletionRequest, Role
from services.scheduler.domain import Job, Progress, ReportProgress, rate_limits_from_pb
from services.scheduler.pacing import Pacer

IsTransient = Callable[[Exception], bool]

CHECKPOINT_SECONDS = 2.0  # results are saved at least this often while a batch runs
ITEM_RETRIES, ITEM_RETRY_SECONDS = 2, 0.5  # an item's transient failures, retried with backoff


def read_results(files: FileStore, results: str) -> tuple[list[pb.BatchItemResult], int]:
    """Every result saved so far, and how many parts hold them (blocking)."""
    parts = files.read_parts(results)
    lines = [line for part in parts for line in part.decode().split("\n") if line]
    return [json_format.Parse(line, pb.BatchItemResult()) for line in lines], len(parts)


def read_items(files: FileStore, name: str) -> list[pb.BatchItem]:
    data = files.get_object(name)
    if data is None:
        raise FileNotFoundError(name)
    return [json_format.Parse(line, pb.BatchItem()) for line in data.decode().split("\n") if line]


class BatchRunner:
    def __init__(
        self,
        files: FileStore,
        inference: FleetClient,
        embeddings: EmbeddingsClient,
        concurrency: int,
        is_transient: IsTransient,
        pacer: Pacer | None = None,
    ) -> None:
        self._pacer = pacer or Pacer()
        self._files = files
        self._inference = inference
        self._embeddings = embeddings
        self._concurrency = concurrency
        self._is_transient = is_transient

    async def run(self, job: Job, report: ReportProgress) -> pb.BatchJobResult:
        batch = job.request.batch
        results = batch.results_object
        items = await asyncio.to_thread(read_items, self._files, batch.items_object)
        saved, parts = await asyncio.to_thread(read_results, self._files, results)
        state = _Progress(results, len(items), saved, parts)
        todo = [index for index in range(len(items)) if index not in state.done]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in todo:
            queue.put_nowait(index)
        concurrency = batch.concurrency or self._concurrency

        async def work() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                state.add(await self._answer_or_retry(job, index, items[index], state))
                if state.due():
                    await self._save(state, report)

        workers = [asyncio.create_task(work()) for _ in range(min(concurrency, len(todo)) or 1)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            # What is answered is kept, also when the run stops (a cancel, an outage, a shutdown):
            # a cancelled batch still hands out its finished lines, and a retry does not redo them.
            await asyncio.shield(self._save(state, report))
        return pb.BatchJobResult(
            results_object=results, total=len(items), completed=state.completed, failed=state.failed
        )

    async def _save(self, state: _Progress, report: ReportProgress) -> None:
        lines = state.take_unsaved()
        if lines:
            data = "".join(json_format.MessageToJson(r, indent=None) + "\n" for r in lines).encode()
            await asyncio.to_thread(self._files.put_part, state.results, state.parts, data)
            state.parts += 1
        with contextlib.suppress(MeshError):  # progress is advisory; the parts are the truth
            await report(state.progress())

    async def _answer_or_retry(self, job: Job, index: int, item: pb.BatchItem, state: _Progress) -> pb.BatchItemResult:
        failed_at = 0.0
        for attempt in range(ITEM_RETRIES + 1):
            try:
                return await self._answer(job, index, item)
            except MeshError as error:  # transient: the others are results already
                failed_at = failed_at or time.monotonic()
                if attempt == ITEM_RETRIES:
                    if state.answered_at > failed_at:  # others were answered meanwhile: this item fails
                        return _failure(pb.BatchItemResult(custom_id=item.custom_id, index=index), error)
                    raise  # the service is down: the job is retried later and resumes
                await asyncio.sleep(ITEM_RETRY_SECONDS * 2**attempt)
        raise AssertionError("unreachable")

    async def _answer(self, job: Job, index: int, item: pb.BatchItem) -> pb.BatchItemResult:
        result = pb.BatchItemResult(custom_id=item.custom_id, index=index)
        kind = item.WhichOneof("request")
        limits = rate_limits_from_pb(job.request.rate_limits)
        await self._pacer.start(job.owner, limits)  # each line counts against its key as it runs
        try:
            if kind == "chat":
                request = dataclasses.replace(ChatRequest.from_pb(item.chat), tenant=job.owner, low_priority=True)
                (reply,) = await self._inference.chat([request])
                result.chat.CopyFrom(_chat_response(request.request_id, reply))
            elif kind == "complete":
                prompt = CompletionRequest.from_pb(item.complete)
                prompt = dataclasses.replace(prompt, tenant=job.owner, low_priority=True)
                (reply,) = await self._inference.complete([prompt])
                result.complete.CopyFrom(_complete_response(prompt.request_id, reply))
            elif kind == "embed":
                result.embed.CopyFrom((await self._embeddings.embed(EmbedRequest.from_pb(item.embed))).to_pb())
            else:
                raise InvalidArgument("The batch item holds no request.")
        except MeshError as error:
            if self._is_transient(error):
                raise
            return _failure(result, error)
        self._pacer.used(job.owner, limits, _tokens(result))
        return result


def _tokens(result: pb.BatchItemResult) -> int:
    if result.HasField("embed"):
        return result.embed.usage.prompt_tokens if result.embed.HasField("usage") else 0
    usage = result.chat.usage if result.HasField("chat") else result.complete.usage
    return usage.prompt_tokens + usage.completion_tokens


class _Progress:
    """What a run has answered: saved in parts, and not yet saved."""

    def __init__(self, results: str, total: int, saved: list[pb.BatchItemResult], parts: int) -> None:
        self.results = results
        self.total = total
        self.done = {r.index for r in saved}
        self.failed = sum(1 for r in saved if r.WhichOneof("outcome") == "error")
        self.parts = parts  # the next part's number
        self.unsaved: list[pb.BatchItemResult] = []
        self.saved_at = time.monotonic()
        self.answered_at = 0.0  # when an item last got an answer (not an error)

    @property
    def completed(self) -> int:
        return len(self.done) - self.failed

    def add(self, result: pb.BatchItemResult) -> None:
        if result.index in self.done:
            return
        self.done.add(result.index)
        failed = result.WhichOneof("outcome") == "error"
        self.failed += failed
        self.answered_at = self.answered_at if failed else time.monotonic()
        self.unsaved.append(result)

    def due(self) -> bool:
        return time.monotonic() - self.saved_at >= CHECKPOINT_SECONDS

    def take_unsaved(self) -> list[pb.BatchItemResult]:
        lines, self.unsaved, self.saved_at = self.unsaved, [], time.monotonic()
        return lines

    def progress(self) -> Progress:
        percent = 100.0 * len(self.done) / self.total if self.total else 100.0
        metrics = {"total": float(self.total), "completed": float(self.completed), "failed": float(self.failed)}
        return Progress(percent=min(percent, 99.0), message="running", metrics=metrics)


def _failure(result: pb.BatchItemResult, error: MeshError) -> pb.BatchItemResult:
    result.error.CopyFrom(
        pb.BatchItemError(
            status_code=http_status(error), code=error.reason, message=error.message, param=error.param or ""
        )
    )
    return result


def _chat_response(request_id: str, reply: Completed) -> inference_pb.ChatResponse:
    message = ChatMessage(role=Role.ASSISTANT, content=reply.text, tool_calls=reply.tool_calls)
    return inference_pb.ChatResponse(
        request_id=request_id,
        model=reply.model,
        message=message.to_pb(),
        finish_reason=reply.finish_reason.to_pb(),
        usage=reply.usage.to_pb(),
        logprobs=[t.to_pb() for t in reply.logprobs],
    )


def _complete_response(request_id: str, reply: Completed) -> inference_pb.CompleteResponse:
    return inference_pb.CompleteResponse(
        request_id=request_id,
        model=reply.model,
        text=reply.text,
        finish_reason=reply.finish_reason.to_pb(),
        usage=reply.usage.to_pb(),
        logprobs=[t.to_pb() for t in reply.logprobs],
    )
