"""What each job type does, on the services that own the work.

Chat and vision jobs always run on the inference service's `background` slot;
embed jobs on the embeddings service. Every gRPC error comes back as the
MeshError the service raised, so the worker can tell retryable failures
(UNAVAILABLE, RESOURCE_EXHAUSTED, ...) from ones that will never succeed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from llmmesh.embeddings.v1 import embeddings_service_pb2_grpc as embeddings_pb_grpc
from llmmesh.inference.v1 import inference_service_pb2 as inference_pb
from llmmesh.inference.v1 import inference_service_pb2_grpc as inference_pb_grpc
from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from services.common.errors import FailedPrecondition, InvalidArgument, MeshError, Unimplemented, from_rpc_error
from services.common.grpc_client import open_channel
from services.scheduler.domain import Job, JobType, Progress, Submission

BACKGROUND_SLOT = "background"
ReportProgress = Callable[[Progress], Awaitable[None]]

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


def is_retryable(error: Exception) -> bool:
    return not isinstance(error, MeshError) or error.code in RETRYABLE_CODES


class JobHandlers:
    """Checks submissions and runs jobs. Holds the channels to inference and embeddings."""

    def __init__(
        self, inference_target: str, embeddings_target: str, internal_token: str, timeout_seconds: float = 3600
    ) -> None:
        self._channels = [open_channel(t, internal_token) for t in (inference_target, embeddings_target)]
        self._inference = inference_pb_grpc.InferenceServiceStub(self._channels[0])
        self._embeddings = embeddings_pb_grpc.EmbeddingsServiceStub(self._channels[1])
        self._timeout = timeout_seconds

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    # ---- at submit time ----

    async def check(self, submission: Submission) -> Submission:
        """Reject what can never run, before it is queued."""
        if submission.job_type is JobType.ADAPTER_TRAIN:
            raise Unimplemented(
                "adapter_train jobs need the trainer service, which this mesh does not run yet.", param="job_type"
            )
        if submission.job_type in (JobType.CHAT, JobType.VISION):
            chat = submission.request.chat
            if chat.model not in ("", BACKGROUND_SLOT):
                raise InvalidArgument(
                    f"Jobs always run on the '{BACKGROUND_SLOT}' slot; 'model' must be empty or '{BACKGROUND_SLOT}'"
                    f" (got '{chat.model}'). Choose its model with the setting model.background.name.",
                    param="request.model",
                )
            if not chat.messages:
                raise InvalidArgument("'request.messages' must not be empty.", param="request.messages")
            has_images = any(part.HasField("image") for m in chat.messages for part in m.content)
            if submission.job_type is JobType.CHAT and has_images:
                raise InvalidArgument(
                    "A chat job carries text only; use job_type 'vision' for images.", param="job_type"
                )
            if submission.job_type is JobType.VISION:
                if not has_images:
                    raise InvalidArgument("A vision job needs at least one image content part.", param="request")
                await self._require_multimodal_background()
        if submission.job_type is JobType.EMBED and not submission.request.embed.texts:
            raise InvalidArgument("'request.input' must hold at least one text.", param="request.input")
        return submission

    async def _require_multimodal_background(self) -> None:
        try:
            response = await self._inference.GetModel(
                inference_pb.GetModelRequest(name=BACKGROUND_SLOT), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        if not response.model.supports_images:
            raise FailedPrecondition(
                f"The background slot's model '{response.model.name}' ({response.model.backend}) is not multimodal;"
                " vision jobs need one that accepts images.",
                param="job_type",
                reason="MODEL_NOT_MULTIMODAL",
            )

    # ---- at run time ----

    async def run(self, job: Job, report: ReportProgress) -> pb.JobResult:
        try:
            if job.job_type in (JobType.CHAT, JobType.VISION):
                return pb.JobResult(chat=await self._chat(job, report))
            if job.job_type is JobType.EMBED:
                return pb.JobResult(embed=await self._embeddings.Embed(job.request.embed, timeout=self._timeout))
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        raise Unimplemented(f"No handler for {job.job_type.value} jobs.")

    async def _chat(self, job: Job, report: ReportProgress) -> inference_pb.ChatResponse:
        """Streams the reply so that progress (tokens so far) reaches WatchJob."""
        request = inference_pb.ChatStreamRequest()
        # ChatStreamRequest repeats ChatRequest's fields with the same numbers.
        request.MergeFromString(job.request.chat.SerializeToString())
        request.model = BACKGROUND_SLOT
        request.request_id = request.request_id or f"{job.job_id}-{job.attempt}"
        text: list[str] = []
        tokens, last = 0, inference_pb.ChatStreamResponse()
        max_tokens = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 0
        async for chunk in self._inference.ChatStream(request, timeout=self._timeout):
            if chunk.HasField("wait_status"):
                continue
            text.append(chunk.delta)
            tokens += 1 if chunk.delta else 0
            last = chunk
            if tokens % 16 == 0 and chunk.delta:
                percent = min(100.0 * tokens / max_tokens, 99.0) if max_tokens else 0.0
                await report(Progress(percent=percent, message="generating", metrics={"tokens": float(tokens)}))
        message = inference_pb.ChatMessage(role=inference_pb.ROLE_ASSISTANT, tool_calls=last.tool_calls)
        message.content.add(text="".join(text))
        return inference_pb.ChatResponse(
            request_id=last.request_id,
            model=last.model,
            message=message,
            finish_reason=last.finish_reason,
            usage=last.usage,
        )
