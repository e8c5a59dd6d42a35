"""The trainer: plans jobs, runs each in a training subprocess, stores what it made.

Jobs live in memory (the scheduler keeps the durable record of an adapter_train
job); adapters live in the artifact store. A plan whose adapter is already stored
succeeds at once (cached), also when an identical job finished while this one
waited for the trainer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from llmmesh.trainer.v1 import trainer_service_pb2 as pb
from services.common.artifacts import ArtifactStore, check_adapter_id, may_use
from services.common.child import Child, ChildFailed, Event
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.grpc_client import open_channel
from services.common.registry import ModelRegistry, ModelSpec
from services.inference.client import InferenceClient
from services.trainer.config import TrainerSettings
from services.trainer.domain import (
    DatasetSource,
    Hyperparameters,
    TrainingJob,
    TrainingLimits,
    TrainingPlan,
    TrainingState,
    TrainRequest,
    adapter_to_pb,
    examples_from_jsonl,
)
from services.trainer.metrics import TRAINING_RUNS, TRAINING_STEP_SECONDS

log = logging.getLogger(__name__)

TRAINABLE_BACKENDS = ("transformers", "gguf")
MAX_JOBS_KEPT = 1000


class Trainer:
    def __init__(
        self, settings: TrainerSettings, registry: ModelRegistry, artifacts: ArtifactStore, defaults: Hyperparameters
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.artifacts = artifacts
        self.defaults = defaults
        self.work_dir = settings.work_dir or settings.data_dir / "training"
        self._jobs: dict[str, TrainingJob] = {}
        self._children: dict[str, Child] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runs = asyncio.Semaphore(settings.max_concurrent_runs)
        self._changed = asyncio.Condition()
        self._inference_channel: grpc.aio.Channel | None = None
        self._inference_client: InferenceClient | None = None

    # ---- jobs ----

    async def submit(self, request: TrainRequest) -> TrainingJob:
        return await self.start(await self._plan(request), request.training_id)

    async def start(self, plan: TrainingPlan, training_id: str = "") -> TrainingJob:
        """A job for the plan: new, the stored adapter (cached), or this id's earlier job."""
        training_id = training_id or TrainingJob.new_id()
        if (existing := self._jobs.get(training_id)) is not None:
            if existing.adapter_id != plan.adapter_id:
                raise AlreadyExists(f"Training job '{training_id}' exists with another plan.", param="training_id")
            if existing.state is not TrainingState.CANCELLED:
                return existing  # a resubmission (e.g. a redelivered scheduler job) attaches to its run
            # Cancelled, yet submitted again under its id: the submitter still wants it; run it again.
        job = TrainingJob(training_id, plan.adapter_id, plan.base_model)
        self._jobs[training_id] = job
        self._forget_old_jobs()
        if not await self._finish_if_stored(job):
            task = asyncio.create_task(self._run(job, plan))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return job

    def _forget_old_jobs(self) -> None:
        """Keep memory bounded: the oldest finished jobs go first (their adapters stay stored)."""
        finished = [key for key, job in self._jobs.items() if job.state.terminal]  # oldest first
        for key in finished[: max(0, len(self._jobs) - MAX_JOBS_KEPT)]:
            del self._jobs[key]

    def get(self, training_id: str) -> TrainingJob:
        if (job := self._jobs.get(training_id)) is None:
            raise NotFound(f"No training job '{training_id}'.", param="training_id")
        return job

    async def watch(self, training_id: str) -> AsyncIterator[TrainingJob]:
        """The job now, then after every change (each a copy), until it ends."""
        job = self.get(training_id)
        snapshot = dataclasses.replace(job)
        while True:
            yield snapshot
            if job.state.terminal:
                return
            seen = snapshot
            async with self._changed:
                await self._changed.wait_for(lambda: job != seen)  # noqa: B023 - awaited here
            snapshot = dataclasses.replace(job)

    async def cancel(self, training_id: str) -> TrainingJob:
        job = self.get(training_id)
        if job.state.terminal:
            return job
        job.state = TrainingState.CANCELLED
        job.end_time = time.time()
        if (child := self._children.get(training_id)) is not None:
            child.kill()
        await self._notify()
        return job

    async def close(self) -> None:
        for child in self._children.values():
            child.kill()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._inference_channel is not None:
            await self._inference_channel.close()

    # ---- adapters ----

    async def list_adapters(self, base_model: str = "", tenant: str = "") -> list[pb.Adapter]:
        """The stored adapters `tenant` may use ("": all), newest first."""
        stored = await asyncio.to_thread(self.artifacts.list)
        usable = [a for a in stored if may_use(a.manifest, tenant)]
        adapters = [adapter_to_pb(a.manifest, a.size_bytes, a.locations) for a in usable]
        return [a for a in adapters if not base_model or a.base_model == base_model]

    async def delete_adapter(self, adapter_id: str, tenant: str = "") -> None:
        """Delete it; a tenant only its own (another's is reported missing, as one that is not there)."""
        check_adapter_id(adapter_id)
        if tenant:
            stored = await asyncio.to_thread(self.artifacts.get, adapter_id, True)
            if stored is None or stored.manifest.get("owner") != tenant:
                raise NotFound(f"No adapter '{adapter_id}'.", param="adapter_id", reason="ADAPTER_NOT_FOUND")
        await asyncio.to_thread(self.artifacts.delete, adapter_id)

    async def share_adapter(self, adapter_id: str) -> pb.Adapter:
        stored = await asyncio.to_thread(self.artifacts.share, check_adapter_id(adapter_id))
        return adapter_to_pb(stored.manifest, stored.size_bytes, stored.locations)

    # ---- planning ----

    def trainable(self, base_model: str) -> ModelSpec:
        """The registry entry of a model with local weights to train on."""
        if not base_model:
            raise InvalidArgument("'base_model' is required.", param="base_model")
        spec = self.registry.resolve(base_model)
        if spec.backend not in TRAINABLE_BACKENDS:
            raise InvalidArgument(
                f"Model '{spec.name}' ({spec.backend} backend) has no local weights to train on.", param="base_model"
            )
        return spec

    async def _plan(self, request: TrainRequest) -> TrainingPlan:
        spec = self.trainable(request.base_model)
        examples = await self._examples(request.dataset, "dataset")
        eval_examples = await self._examples(request.eval_dataset, "eval_dataset") if request.eval_dataset else []
        hyperparameters = self.defaults.overridden(request.hyperparameters)
        limits = self._limits(request.limits)
        for within, param, what in (
            (len(examples) + len(eval_examples) <= limits.max_examples, "dataset", f"{limits.max_examples} examples"),
            (hyperparameters.epochs <= limits.max_epochs, "hyperparameters.epochs", f"{limits.max_epochs} epochs"),
            (hyperparameters.max_steps <= limits.max_steps, "hyperparameters.max_steps", f"{limits.max_steps} steps"),
        ):
            if not within:  # one caller's run must not hold the trainer (and maybe the GPU) for days
                raise InvalidArgument(f"'{param}' is over this run's limit of {what}.", param=param)
        return TrainingPlan(
            spec.name,
            examples,
            eval_examples,
            hyperparameters,
            request.owner,
            limits.max_run_seconds,
            request.name,
        )

    def _limits(self, requested: dict[str, float]) -> TrainingLimits:
        """The run's limits: the request's (its API key's), else this trainer's."""
        defaults = self.settings
        return TrainingLimits(
            max_examples=int(requested.get("max_examples", defaults.max_examples)),
            max_epochs=int(requested.get("max_epochs", defaults.max_epochs)),
            max_steps=int(requested.get("max_steps", defaults.max_steps)),
            max_run_seconds=requested.get("max_run_seconds", defaults.max_run_seconds),
        )

    async def _examples(self, dataset: DatasetSource, param: str) -> list[list[dict[str, str]]]:
        if dataset.examples is not None:
            return dataset.examples
        self._check_dataset_location(dataset.uri, f"{param}.uri")
        text = await asyncio.to_thread(self.artifacts.read_object, dataset.uri, self.settings.max_dataset_bytes)
        return examples_from_jsonl(text, f"{param}.uri")

    def _check_dataset_location(self, uri: str, param: str) -> None:
        """Refuse, before any read, a dataset outside the configured locations."""
        allowed = [
            location if location.endswith("/") else location + "/" for location in self.settings.dataset_locations
        ]
        if not any(uri.startswith(location) for location in allowed):
            where = ", ".join(allowed) if allowed else "none: send the examples inline"
            raise InvalidArgument(f"'{param}' is outside the allowed dataset locations ({where}).", param=param)

    # ---- running ----

    async def _finish_if_stored(self, job: TrainingJob) -> bool:
        stored = await asyncio.to_thread(self.artifacts.get, job.adapter_id)
        if stored is None:
            return False
        job.cached, job.state, job.end_time = True, TrainingState.SUCCEEDED, time.time()
        job.adapter = adapter_to_pb(stored.manifest, stored.size_bytes, stored.locations)
        TRAINING_RUNS.labels(job.base_model, "cached").inc()
        await self._notify()
        return True

    async def _run(self, job: TrainingJob, plan: TrainingPlan) -> None:
        async with self._runs:
            if job.state.terminal or await self._finish_if_stored(job) or job.state.terminal:
                return  # cancelled (while queued, or while the store was checked), or stored meanwhile
            job.state, job.start_time = TrainingState.RUNNING, time.time()
            await self._notify()
            run_dir = self.work_dir / job.training_id
            unloaded = await self._unload_inference()
            try:
                metrics = await self._train(job, plan, run_dir)
                manifest = {
                    "adapter_id": job.adapter_id,
                    "owner": plan.owner,
                    "base_model": plan.base_model,
                    "hash": job.adapter_id,
                    "hyperparameters": plan.hyperparameters.to_json(),
                    "metrics": metrics,
                    "created_at": time.time(),
                    "training_id": job.training_id,
                    "name": plan.name,
                }
                stored = await asyncio.to_thread(self.artifacts.put, job.adapter_id, run_dir / "adapter", manifest)
                job.adapter = adapter_to_pb(stored.manifest, stored.size_bytes, stored.locations)
                job.state = TrainingState.SUCCEEDED
                TRAINING_STEP_SECONDS.labels(plan.base_model).observe(metrics.get("seconds_per_step", 0.0))
            except Exception as error:  # noqa: BLE001 - any failure ends this job, never the service
                if job.state is not TrainingState.CANCELLED:
                    log.warning("training %s failed: %s", job.training_id, error)
                    job.state, job.error = TrainingState.FAILED, str(error) or type(error).__name__
            finally:
                job.end_time = time.time()
                TRAINING_RUNS.labels(plan.base_model, job.state.value).inc()
                shutil.rmtree(run_dir, ignore_errors=True)
                await self._reload_inference(unloaded)
                await self._notify()

    async def _train(self, job: TrainingJob, plan: TrainingPlan, run_dir: Path) -> dict[str, float]:
        spec = self.registry.resolve(plan.base_model)
        limit = plan.max_run_seconds or self.settings.max_run_seconds
        model_path = await asyncio.to_thread(spec.resolve_path)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        (run_dir / "plan.json").write_text(
            json.dumps(
                {
                    "model_path": str(model_path),
                    "cache_dir": str(self.settings.transformers_cache_dir.resolve()),
                    "chat_template": spec.chat_template or "",
                    "examples": plan.examples,
                    "eval_examples": plan.eval_examples,
                    "hyperparameters": plan.hyperparameters.to_json(),
                }
            )
        )
        child = Child("services.trainer.training", run_dir)
        self._children[job.training_id] = child
        if job.state is TrainingState.CANCELLED:  # cancelled while the run was being set up
            child.kill()
        metrics: dict[str, float] = {}

        async def on_event(event: Event) -> None:
            if event["event"] in ("started", "step"):
                self._on_progress(job, event)
                await self._notify()
            elif event["event"] == "warning":
                log.warning("training %s: %s", job.training_id, event.get("message"))
            elif event["event"] == "done":
                metrics.update({k: float(v) for k, v in event["metrics"].items()})

        try:
            async with asyncio.timeout(limit):
                await child.run(on_event)
        except TimeoutError:
            child.kill()
            raise ChildFailed(f"The run passed its wall-clock limit of {limit:g} s and was stopped.") from None
        finally:
            self._children.pop(job.training_id, None)
        if not metrics:
            raise ChildFailed("The training process ended without its results.")
        return metrics

    def _on_progress(self, job: TrainingJob, event: Event) -> None:
        job.total_steps = int(event.get("total_steps", job.total_steps))
        if event["event"] == "step":
            job.step = int(event["step"])
            job.loss = float(event["loss"])
            elapsed = float(event["elapsed"])
            job.eta_seconds = elapsed / job.step * max(job.total_steps - job.step, 0)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- sharing one GPU with inference ----

    def _inference(self) -> InferenceClient:
        """One channel to inference, opened on first use."""
        if self._inference_client is None:
            channel = open_channel(self.settings.inference_target, self.settings.required_internal_token())
            self._inference_channel, self._inference_client = channel, InferenceClient(channel, 600)
        return self._inference_client

    async def _unload_inference(self) -> list[str]:
        """With free_inference_memory, the models inference had loaded (now unloaded)."""
        if not self.settings.free_inference_memory:
            return []
        try:
            return await self._inference().unload_models()
        except Exception as error:  # noqa: BLE001 - training still runs; it may just be short of memory
            log.warning("could not ask inference to unload its models: %s", error)
            return []

    async def _reload_inference(self, names: list[str]) -> None:
        if not names:
            return
        try:
            for name in names:
                await self._inference().load_model(name)
        except Exception as error:  # noqa: BLE001 - they load again on their next request anyway
            log.warning("could not ask inference to reload %s: %s", names, error)
