"""What each job type does, on the services that own the work.

Chat and vision jobs always run on the inference service's `background` slot;
embed jobs on the embeddings service; adapter_train jobs on the trainer, whose
progress (step, loss, eta) the job reports as it goes; batch jobs on whichever the
items name, at low priority (services/scheduler/batches.py). The services are reached through
their typed clients, so every error comes back as the MeshError the service raised, and
the worker can tell retryable failures (UNAVAILABLE, RESOURCE_EXHAUSTED, ...) from ones
that will never succeed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import grpc

from llmmesh.inference.v1 import inference_service_pb2 as inference_pb
from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.trainer.v1 import trainer_service_pb2 as trainer_pb
from services.common.artifacts import ADAPTER_ID
from services.common.errors import FailedPrecondition, InvalidArgument, MeshError, Unimplemented, quote
from services.common.files import FileSettings, FileStore
from services.common.fleet import FleetSettings
from services.common.grpc_client import open_channel
from services.common.schema_limits import checked_schema
from services.embeddings.client import EmbeddingsClient, EmbedRequest
from services.fleet.client import FleetClient
from services.inference.api import ChatMessage, ChatRequest, Role, ToolCall, Usage
from services.scheduler.batches import BatchRunner
from services.scheduler.config import SchedulerSettings
from services.scheduler.domain import Job, JobType, Progress, ReportProgress, Submission, rate_limits_from_pb
from services.scheduler.pacing import Pacer
from services.trainer.client import TrainerClient, TrainingState

BACKGROUND_SLOT = "background"

# Failures worth another attempt: the service was down, busy or cut off.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


# Of those, an outage or overload: retried until the job's TTL, not only MaxDeliver times.
TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
# RESOURCE_EXHAUSTED is an overload only when a service said so (these reasons, or a Retry-After).
# gRPC's own RESOURCE_EXHAUSTED (a message or its metadata over the transport's limits) comes
# back the same however often the request is sent: the request itself is the problem.
OVERLOAD_REASONS = frozenset({"QUEUE_FULL", "MODEL_QUEUE_FULL", "UPSTREAM_RATE_LIMITED", "NODE_BUSY", "RATE_LIMITED"})


def _overload_or_outage(error: MeshError) -> bool:
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return error.reason in OVERLOAD_REASONS or error.retry_after_seconds is not None
    return True


def is_retryable(error: Exception) -> bool:
    """Whether another attempt may succeed: classified by the failure's cause, not its code alone."""
    return not isinstance(error, MeshError) or (error.code in RETRYABLE_CODES and _overload_or_outage(error))


def is_transient(error: Exception) -> bool:
    return isinstance(error, MeshError) and error.code in TRANSIENT_CODES and _overload_or_outage(error)


class JobHandlers:
    """Checks submissions and runs jobs. Holds the channels to inference, embeddings and the trainer."""

    def __init__(
        self,
        inference_target: str,
        embeddings_target: str,
        internal_token: str,
        timeout_seconds: float = 3600,
        trainer_target: str = "",
        fleet: FleetSettings | None = None,
        files: FileSettings | None = None,
        batch_concurrency: int = 2,
    ) -> None:
        targets = (inference_target, embeddings_target, trainer_target)
        self._channels = [open_channel(t, internal_token) for t in targets if t]
        # Jobs take the same routes as the gateway's requests: one router, in the inference client.
        self._inference = FleetClient(self._channels[0], timeout_seconds, fleet, internal_token, inference_target)
        self._inference.start()
        self._embeddings = EmbeddingsClient(self._channels[1], timeout_seconds)
        self._trainer = TrainerClient(self._channels[2], timeout_seconds) if trainer_target else None
        self._files = FileStore(files)
        self._pacer = Pacer()
        self._batches = BatchRunner(
            self._files, self._inference, self._embeddings, batch_concurrency, is_transient, self._pacer
        )

    @classmethod
    def from_settings(cls, settings: SchedulerSettings) -> JobHandlers:
        return cls(
            settings.inference_target,
            settings.embeddings_target,
            settings.required_internal_token(),
            trainer_target=settings.trainer_target,
            fleet=settings.fleet,
            files=settings.files,
            batch_concurrency=settings.batch_concurrency,
        )

    async def close(self) -> None:
        await self._inference.close()
        for channel in self._channels:
            await channel.close()

    # ---- at submit time ----

    async def check(self, submission: Submission) -> Submission:
        """Reject what can never run, before it is queued."""
        if submission.job_type is JobType.ADAPTER_TRAIN:
            if self._trainer is None:
                raise Unimplemented("This scheduler has no trainer service configured.", param="job_type")
            train = submission.request.adapter_train
            if not train.base_model or not train.HasField("dataset"):
                raise InvalidArgument("An adapter_train job needs 'base_model' and 'dataset'.", param="request")
            # Named as chat names models: a slot, tier or alias means the model it resolves to now.
            train.base_model = await self._resolve_model(train.base_model)
        if submission.job_type in (JobType.CHAT, JobType.VISION):
            chat = submission.request.chat
            if chat.model not in ("", BACKGROUND_SLOT):
                raise InvalidArgument(
                    f"Jobs always run on the '{BACKGROUND_SLOT}' slot; 'model' must be empty or '{BACKGROUND_SLOT}'"
                    f" (got '{quote(chat.model)}'). Choose its model with the setting model.background.name.",
                    param="request.model",
                )
            if not chat.messages:
                raise InvalidArgument("'request.messages' must not be empty.", param="request.messages")
            # A schema over budget could never run: refused now rather than failed at run time.
            if chat.response_format.json_schema:
                checked_schema(chat.response_format.json_schema, param="request.response_format")
            for tool in chat.tools:
                if tool.parameters_json_schema:
                    checked_schema(tool.parameters_json_schema, param="request.tools")
            has_images = any(part.HasField("image") for m in chat.messages for part in m.content)
            if submission.job_type is JobType.CHAT and has_images:
                raise InvalidArgument(
                    "A chat job carries text only; use job_type 'vision' for images.", param="job_type"
                )
            if submission.job_type is JobType.VISION:
                if not has_images:
                    raise InvalidArgument("A vision job needs at least one image content part.", param="request")
                await self._require_multimodal_background()
        if submission.job_type is JobType.BATCH:
            batch = submission.request.batch
            if not (batch.items_object and batch.results_object) or batch.item_count < 1:
                raise InvalidArgument(
                    "A batch job needs 'items_object', 'results_object' and at least one item.", param="request"
                )
        if submission.job_type is JobType.EMBED and not submission.request.embed.texts:
            raise InvalidArgument("'request.input' must hold at least one text.", param="request.input")
        return submission

    async def _resolve_model(self, name: str) -> str:
        try:
            return (await self._inference.get_model(name)).name
        except MeshError as error:
            error.param = "request.base_model"
            raise

    async def _require_multimodal_background(self) -> None:
        model = await self._inference.get_model(BACKGROUND_SLOT)
        if not model.supports_images:
            raise FailedPrecondition(
                f"The background slot's model '{model.name}' ({model.backend}) is not multimodal;"
                " vision jobs need one that accepts images.",
                param="job_type",
                reason="MODEL_NOT_MULTIMODAL",
            )

    # ---- at run time ----

    async def run(
        self, job: Job, report: ReportProgress, cancelled_by_user: Callable[[], bool] = lambda: True
    ) -> pb.JobResult:
        """Run `job`. When the run is cancelled, `cancelled_by_user` tells a cancel of the job from a
        worker letting go of it (shutdown, a lost lease): only the first stops what it started."""
        limits = rate_limits_from_pb(job.request.rate_limits)
        if job.job_type in (JobType.CHAT, JobType.VISION):
            await self._pacer.start(job.owner, limits)
            chat = await self._chat(job, report)
            self._pacer.used(job.owner, limits, chat.usage.prompt_tokens + chat.usage.completion_tokens)
            return pb.JobResult(chat=chat)
        if job.job_type is JobType.EMBED:
            await self._pacer.start(job.owner, limits)
            embedded = await self._embeddings.embed(EmbedRequest.from_pb(job.request.embed))
            self._pacer.used(job.owner, limits, embedded.prompt_tokens)
            return pb.JobResult(embed=embedded.to_pb())
        if job.job_type is JobType.ADAPTER_TRAIN:
            return pb.JobResult(adapter_train=await self._train(job, report, cancelled_by_user))
        if job.job_type is JobType.BATCH:
            return pb.JobResult(batch=await self._batches.run(job, report))
        raise Unimplemented(f"No handler for {job.job_type.value} jobs.")

    async def _chat(self, job: Job, report: ReportProgress) -> inference_pb.ChatResponse:
        """Streams the reply so that progress (tokens so far) reaches WatchJob."""
        request = dataclasses.replace(
            ChatRequest.from_pb(job.request.chat),
            model=BACKGROUND_SLOT,
            tenant=job.owner,  # its owner's cache entries and adapters only
            request_id=job.request.chat.request_id or f"{job.job_id}-{job.attempt}",
        )
        text: list[str] = []
        tokens, model, usage, finish, calls = 0, "", Usage(0, 0), None, tuple[ToolCall, ...]()
        max_tokens = request.sampling.max_tokens or 0
        async for event in await self._inference.stream_chat([request]):
            chunk = event.chunk
            if chunk.wait_status is not None:
                continue
            text.append(chunk.text)
            tokens += 1 if chunk.text else 0
            model, usage, finish = event.model, chunk.usage or usage, chunk.finish_reason or finish
            calls = chunk.tool_calls or calls
            if tokens % 16 == 0 and chunk.text:
                percent = min(100.0 * tokens / max_tokens, 99.0) if max_tokens else 0.0
                await report(Progress(percent=percent, message="generating", metrics={"tokens": float(tokens)}))
        message = ChatMessage(role=Role.ASSISTANT, content="".join(text), tool_calls=calls)
        return inference_pb.ChatResponse(
            request_id=request.request_id,
            model=model,
            message=message.to_pb(),
            finish_reason=finish.to_pb() if finish else inference_pb.FINISH_REASON_UNSPECIFIED,
            usage=usage.to_pb(),
        )

    async def _train(
        self, job: Job, report: ReportProgress, cancelled_by_user: Callable[[], bool]
    ) -> trainer_pb.TrainingJob:
        """Starts training under the job's id (a redelivered job finds its run again) and follows it."""
        assert self._trainer is not None
        request = trainer_pb.TrainAdapterRequest()
        request.CopyFrom(job.request.adapter_train)
        request.owner = job.owner  # the adapter is the job owner's
        request.training_id = job.job_id if ADAPTER_ID.match(job.job_id) else ""
        started = await self._trainer.train(request)
        training_id = started.training_id
        try:
            last = started
            async for last in await self._trainer.watch(training_id):
                if last.total_steps:
                    metrics = {"step": float(last.step), "loss": last.loss, "eta_seconds": last.eta_seconds}
                    percent = min(100.0 * last.step / last.total_steps, 99.0)
                    await report(Progress(percent=percent, message="training", metrics=metrics))
        except asyncio.CancelledError:
            if cancelled_by_user():  # the job was cancelled: so is the run
                await asyncio.shield(self._trainer.cancel(training_id))
            # Otherwise this worker only lets go (a shutdown is not a cancel): the run goes on in the
            # trainer, and the redelivered job attaches to it again under the same id.
            raise
        if last.state is not TrainingState.SUCCEEDED:
            # Not retried: the same plan would fail the same way.
            raise FailedPrecondition(
                f"Training {last.state}: {last.error}" if last.error else f"Training {last.state}."
            )
        return last.to_pb()
