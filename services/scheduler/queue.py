"""The job queue on NATS JetStream: one work-queue stream, one durable pull consumer per
job type and priority band.

A message carries only the job id; the job itself lives in PostgreSQL. Messages
go to `jobs.<stream>.<type>.<band>`; a worker asks the `high` band's consumer
first, so jobs submitted with priority > 0 overtake the waiting normal ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind

from services.common import tracing
from services.common.errors import Unavailable
from services.scheduler.domain import Job, JobType

log = logging.getLogger(__name__)

BANDS = ("high", "normal")


def band_for(priority: int) -> str:
    return "high" if priority > 0 else "normal"


@dataclass(frozen=True)
class QueueConfig:
    stream: str
    replicas: int
    duplicate_window_seconds: float
    ack_wait_seconds: float
    max_deliver: int
    publish_timeout_seconds: float

    @property
    def subject_prefix(self) -> str:
        """Subjects of the stream's messages; named after it, so that streams never overlap."""
        return f"jobs.{self.stream}"

    @property
    def cancel_subject(self) -> str:
        return f"control.{self.stream}.cancel"


class JobQueue:
    """A NATS connection with the jobs stream. Reconnects by itself when the server restarts."""

    def __init__(self, url: str, config: QueueConfig, credentials: dict[str, str] | None = None) -> None:
        self.url = url
        self.config = config
        self.credentials = credentials or {}  # user and password, unless the URL holds them
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None

    async def connect(self, name: str) -> None:
        self.nc = await nats.connect(
            self.url,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=self._log_error,
            disconnected_cb=self._log_disconnect,
            reconnected_cb=self._log_reconnect,
            **self.credentials,
        )
        self.js = self.nc.jetstream(timeout=self.config.publish_timeout_seconds)
        await self.ensure_stream()

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(NatsError, asyncio.TimeoutError, OSError):
                await self.nc.flush(timeout=2)  # acks already sent reach the server
            with contextlib.suppress(NatsError, asyncio.TimeoutError, OSError):  # the server may be gone
                await self.nc.close()

    async def ensure_stream(self) -> bool:
        """Create the stream, or bring its config up to date; True when it had to be created
        (at first start, or after NATS lost its data)."""
        assert self.js is not None
        config = api.StreamConfig(
            name=self.config.stream,
            subjects=[f"{self.config.subject_prefix}.>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            num_replicas=self.config.replicas,
            duplicate_window=self.config.duplicate_window_seconds,
        )
        try:
            await self.js.stream_info(self.config.stream)
        except NotFoundError:
            await self.js.add_stream(config)
            return True
        await self.js.update_stream(config)
        return False

    async def has_message(self, stream_sequence: int) -> bool:
        assert self.js is not None
        try:
            await self.js.get_msg(self.config.stream, stream_sequence)
        except NotFoundError:
            return False
        return True

    # ---- publishing ----

    async def publish(self, job: Job) -> int:
        """Queue `job`; its stream sequence. Unavailable when JetStream did not confirm."""
        assert self.js is not None
        subject = f"{self.config.subject_prefix}.{job.job_type.value}.{band_for(job.priority)}"
        try:
            with tracing.tracer().start_as_current_span(f"publish {subject}", kind=SpanKind.PRODUCER):
                headers = {"Nats-Msg-Id": job.message_id, **tracing.inject()}  # the worker joins this trace
                ack = await self.js.publish(subject, job.job_id.encode(), headers=headers, stream=self.config.stream)
        except (TimeoutError, NatsError) as error:
            raise Unavailable(
                f"The job queue did not accept the job ({type(error).__name__}); it was not queued. Submit it again.",
                reason="QUEUE_UNAVAILABLE",
                retry_after_seconds=1,
            ) from error
        return ack.seq

    async def publish_cancel(self, job_id: str) -> None:
        """Tell every worker to stop `job_id` now (best effort: workers also notice on heartbeat)."""
        if self.nc is not None and self.nc.is_connected:
            with contextlib.suppress(NatsError):
                await self.nc.publish(self.config.cancel_subject, job_id.encode())

    async def subscribe_cancels(self, on_cancel: Callable[[str], Awaitable[None]]) -> None:
        assert self.nc is not None

        async def handle(msg: Msg) -> None:
            try:
                await on_cancel(msg.data.decode(errors="replace"))
            except Exception:  # noqa: BLE001 - one bad message must not end the subscription
                log.exception("handling a cancel message failed")

        await self.nc.subscribe(self.config.cancel_subject, cb=handle)

    # ---- consuming ----

    async def consumers(self, job_type: JobType) -> list[JetStreamContext.PullSubscription]:
        """The pull subscriptions of one job type, high band first."""
        assert self.js is not None
        subscriptions = []
        for band in BANDS:
            durable = f"workers-{job_type.value}-{band}"
            config = api.ConsumerConfig(
                durable_name=durable,
                filter_subject=f"{self.config.subject_prefix}.{job_type.value}.{band}",
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.config.ack_wait_seconds,
                max_deliver=self.config.max_deliver,
                max_ack_pending=-1,
            )
            subscriptions.append(
                await self.js.pull_subscribe(
                    f"{self.config.subject_prefix}.{job_type.value}.{band}",
                    durable=durable,
                    stream=self.config.stream,
                    config=config,
                )
            )
        return subscriptions

    async def subscribe_max_deliveries(self, on_exhausted: Callable[[int, int], Awaitable[None]]) -> None:
        """JetStream's advisory for a message that reached MaxDeliver without an ack (its worker
        died on the last attempt): `on_exhausted(stream_sequence, deliveries)`. A queue group, so
        that one scheduler replica handles each."""
        assert self.nc is not None
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.config.stream}.*"

        async def handle(msg: Msg) -> None:
            try:
                advisory = json.loads(msg.data)
                await on_exhausted(int(advisory["stream_seq"]), int(advisory["deliveries"]))
            except Exception:  # noqa: BLE001 - a malformed advisory must not end the subscription
                log.exception("handling a MaxDeliver advisory failed")

        await self.nc.subscribe(subject, queue="llmmesh-scheduler", cb=handle)

    async def job_id_at(self, stream_sequence: int) -> str | None:
        assert self.js is not None
        try:
            message = await self.js.get_msg(self.config.stream, stream_sequence)
        except NotFoundError:
            return None
        return message.data.decode() if message.data else None

    async def delete(self, stream_sequence: int) -> None:
        assert self.js is not None
        with contextlib.suppress(NotFoundError):
            await self.js.delete_msg(self.config.stream, stream_sequence)

    @staticmethod
    async def fetch_one(subscription: JetStreamContext.PullSubscription, timeout: float) -> Msg | None:
        try:
            messages = await subscription.fetch(1, timeout=timeout)
        except (TimeoutError, NatsTimeout):
            return None
        return messages[0] if messages else None

    # ---- logging ----

    @staticmethod
    async def _log_error(error: Exception) -> None:
        log.warning("NATS: %s", error)

    @staticmethod
    async def _log_disconnect() -> None:
        log.warning("NATS disconnected; reconnecting")

    @staticmethod
    async def _log_reconnect() -> None:
        log.info("NATS reconnected")
