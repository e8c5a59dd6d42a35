"""Model builds: seed file -> training data -> adapter -> validation -> merged model -> GGUF.

One build runs at a time (they share the trainer and the disk). Each step logs
what it does; the log is kept for the build and can be followed while it runs.
Training goes through the trainer like any job (so an identical build is a cache
hit); merging and converting run in a child process (services/trainer/export.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from llmmesh.trainer.v1 import trainer_service_pb2 as pb
from services.common.child import Child, Event
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.trainer.domain import Hyperparameters, TrainingPlan, TrainingState, timestamp
from services.trainer.engine import Trainer
from services.trainer.seeds import generate, split

STEPS = ("generate", "train", "validate", "merge", "convert")
State: TypeAlias = pb.PipelineState.ValueType  # noqa: UP040 - mypy-protobuf's NewType
RUNNING, SUCCEEDED, FAILED = pb.PIPELINE_STATE_RUNNING, pb.PIPELINE_STATE_SUCCEEDED, pb.PIPELINE_STATE_FAILED
CANCELLED, PENDING, SKIPPED = pb.PIPELINE_STATE_CANCELLED, pb.PIPELINE_STATE_PENDING, pb.PIPELINE_STATE_SKIPPED
MAX_SEED_BYTES = 16 * 1024 * 1024


@dataclass
class LogLine:
    time: float
    step: str
    message: str

    def to_pb(self) -> pb.WatchPipelineLogsResponse:
        return pb.WatchPipelineLogsResponse(time=timestamp(self.time), step=self.step, message=self.message)


@dataclass
class Build:
    build_id: str
    base_model: str
    state: State = RUNNING
    steps: dict[str, tuple[State, str]] = field(default_factory=lambda: {name: (PENDING, "") for name in STEPS})
    adapter_id: str = ""
    training_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    error: str = ""
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    logs: list[LogLine] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.state != RUNNING

    def to_pb(self) -> pb.Pipeline:
        return pb.Pipeline(
            build_id=self.build_id,
            base_model=self.base_model,
            state=self.state,
            steps=[
                pb.PipelineStep(name=name, state=state, detail=detail) for name, (state, detail) in self.steps.items()
            ],
            adapter_id=self.adapter_id,
            metrics=self.metrics,
            artifacts=self.artifacts,
            error=self.error,
            start_time=timestamp(self.start_time),
            end_time=timestamp(self.end_time),
        )


class Pipelines:
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.root = trainer.settings.data_dir / "pipeline"
        self._build: Build | None = None
        self._task: asyncio.Task[None] | None = None
        self._child: Child | None = None
        self._changed = asyncio.Condition()

    async def build(self, request: pb.BuildPipelineRequest) -> Build:
        """Start a build. Its data is generated and checked here, so a bad seed file is a 400 now."""
        if self._build is not None and not self._build.ended:
            raise FailedPrecondition(f"Build {self._build.build_id} is running; cancel it or wait.", reason="BUSY")
        self.trainer.trainable(request.base_model)
        seed = await self._seed_text(request)
        examples = generate(seed)
        eval_fraction = request.eval_fraction if request.HasField("eval_fraction") else 0.2
        train, held_out = split(examples, eval_fraction, request.split_seed)
        hyperparameters = Hyperparameters.from_pb(request.hyperparameters, self.trainer.defaults)
        spec = self.trainer.registry.resolve(request.base_model)
        build_id = f"build-{uuid.uuid4().hex[:12]}"
        build = Build(build_id, spec.name, training_id=f"{build_id}-train")
        build.metrics.update(examples=len(examples), train_examples=len(train), eval_examples=len(held_out))
        self._build = build
        await self._step(
            build, "generate", SUCCEEDED, f"{len(examples)} examples: {len(train)} train, {len(held_out)} held out"
        )
        plan = TrainingPlan(spec.name, train, held_out, hyperparameters)
        self._task = asyncio.create_task(self._run(build, plan))
        return build

    def current(self) -> Build:
        if self._build is None:
            raise NotFound("No build has run yet.")
        return self._build

    async def cancel(self) -> Build:
        build = self.current()
        if build.ended:
            return build
        if self._child is not None:
            self._child.kill()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # After the task stopped, so that a run it was starting cannot slip past.
        with contextlib.suppress(NotFound):
            await self.trainer.cancel(build.training_id)
        return build

    async def logs(self) -> AsyncIterator[LogLine]:
        """The current build's log: what is there, then each new line, until it ends."""
        build, sent = self.current(), 0
        while True:
            while sent < len(build.logs):
                yield build.logs[sent]
                sent += 1
            if build.ended:
                return
            async with self._changed:
                await self._changed.wait_for(lambda: len(build.logs) > sent or build.ended)  # noqa: B023

    async def artifacts(self) -> list[pb.Artifact]:
        return await asyncio.to_thread(self._artifacts_on_disk)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            await self.cancel()

    # ---- the steps ----

    async def _run(self, build: Build, plan: TrainingPlan) -> None:
        step = "train"
        try:
            await self._train(build, plan)
            step = "validate"
            await self._validate(build)
            step = "merge"
            await self._export(build, plan)
            build.state = SUCCEEDED
            await self._log(build, "convert", f"build finished in {time.time() - build.start_time:.0f} s")
        except asyncio.CancelledError:
            build.state = CANCELLED
            await self._step(build, step, CANCELLED, "cancelled")
        except Exception as error:  # noqa: BLE001 - the build fails, the service carries on
            build.state, build.error = FAILED, str(error) or type(error).__name__
            await self._step(build, self._running_step(build) or step, FAILED, build.error)
        finally:
            build.end_time = time.time()
            await self._notify()

    async def _train(self, build: Build, plan: TrainingPlan) -> None:
        await self._step(build, "train", RUNNING, f"adapter {plan.adapter_id}")
        job = await self.trainer.start(plan, build.training_id)
        build.adapter_id = job.adapter_id
        async for update in self.trainer.watch(job.training_id):
            if update.state is TrainingState.RUNNING and update.step:
                await self._log(build, "train", f"step {update.step}/{update.total_steps} loss {update.loss:.4f}")
        job = self.trainer.get(job.training_id)
        if job.state is not TrainingState.SUCCEEDED:
            raise RuntimeError(f"Training {job.state.value}: {job.error}")
        assert job.adapter is not None
        build.metrics.update(job.adapter.metrics)
        detail = "cached: trained before" if job.cached else f"{job.step} steps"
        await self._step(build, "train", SUCCEEDED, detail)

    async def _validate(self, build: Build) -> None:
        before, after = build.metrics.get("eval_loss_before"), build.metrics.get("eval_loss_after")
        if before is None or after is None:
            raise RuntimeError("Training reported no held-out loss.")
        detail = f"held-out loss {before:.4f} -> {after:.4f}"
        if not after < before:
            raise RuntimeError(f"Validation failed: {detail} did not improve.")
        await self._step(build, "validate", SUCCEEDED, detail)

    async def _export(self, build: Build, plan: TrainingPlan) -> None:
        spec = self.trainer.registry.resolve(plan.base_model)
        model_path = await asyncio.to_thread(spec.resolve_path)
        adapter_dir = await asyncio.to_thread(self.trainer.artifacts.resolve, build.adapter_id)
        run_dir = self.root / build.build_id
        run_dir.mkdir(parents=True, exist_ok=True)
        gguf_path = run_dir / f"{spec.name}-{build.adapter_id[:12]}.gguf"
        (run_dir / "export.json").write_text(
            json.dumps(
                {
                    "model_path": str(model_path),
                    "cache_dir": str(self.trainer.settings.transformers_cache_dir.resolve()),
                    "adapter_dir": str(adapter_dir),
                    "merged_dir": str(run_dir / "merged"),
                    "gguf_path": str(gguf_path),
                }
            )
        )
        await self._step(build, "merge", RUNNING, "merging the adapter into the base")

        async def on_event(event: Event) -> None:
            if event["event"] == "merged":
                build.artifacts.append(event["path"])
                await self._step(build, "merge", SUCCEEDED, f"{event['changed']} weights merged: {event['path']}")
                await self._step(build, "convert", RUNNING, "writing GGUF")
            elif event["event"] == "converted":
                build.artifacts.append(event["path"])
                await self._step(build, "convert", SUCCEEDED, f"{event['replaced']} tensors replaced: {event['path']}")

        self._child = Child("services.trainer.export", run_dir)
        try:
            await self._child.run(on_event)
        finally:
            self._child = None
        if model_path.suffix != ".gguf":
            await self._step(build, "convert", SKIPPED, "the base is not a GGUF model")

    # ---- bookkeeping ----

    async def _seed_text(self, request: pb.BuildPipelineRequest) -> str:
        source = request.WhichOneof("seed")
        if source == "seed_jsonl":
            return request.seed_jsonl
        if source == "seed_uri":
            return await asyncio.to_thread(
                self.trainer.artifacts.read_object, request.seed_uri, MAX_SEED_BYTES, "seed_uri"
            )
        raise InvalidArgument("Set 'seed_jsonl' or 'seed_uri'.", param="seed")

    async def _step(self, build: Build, step: str, state: State, detail: str) -> None:
        build.steps[step] = (state, detail)
        await self._log(
            build, step, f"{pb.PipelineState.Name(state).removeprefix('PIPELINE_STATE_').lower()}: {detail}"
        )

    async def _log(self, build: Build, step: str, message: str) -> None:
        build.logs.append(LogLine(time.time(), step, message))
        await self._notify()

    def _running_step(self, build: Build) -> str | None:
        return next((name for name, (state, _) in build.steps.items() if state == RUNNING), None)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _artifacts_on_disk(self) -> list[pb.Artifact]:
        found: list[tuple[str, Path]] = [("adapter", p) for p in self.trainer.artifacts.root.glob("*/adapter.zip")]
        found += [("merged", p) for p in self.root.glob("*/merged") if p.is_dir()]
        found += [("gguf", p) for p in self.root.glob("*/*.gguf")]
        artifacts = [
            pb.Artifact(kind=kind, path=str(path), size_bytes=_size(path), create_time=timestamp(path.stat().st_mtime))
            for kind, path in found
        ]
        return sorted(artifacts, key=lambda a: a.create_time.ToNanoseconds(), reverse=True)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
