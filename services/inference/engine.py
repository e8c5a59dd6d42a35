"""Inference use cases, independent of gRPC: resolve the model, validate, generate."""

from __future__ import annotations

from services.inference.domain import (
    ChatRequest,
    CompletionRequest,
    Generation,
    GenerationRequest,
    ModelInfo,
)
from services.inference.model_manager import ModelManager
from services.inference.registry import ModelRegistry, ModelSpec


class InferenceEngine:
    def __init__(self, registry: ModelRegistry, models: ModelManager) -> None:
        self.registry = registry
        self.models = models

    async def chat(self, request: ChatRequest) -> Generation:
        request.validate()
        spec = self.registry.resolve(request.model)
        return await self._start(
            spec,
            GenerationRequest(
                request_id=request.request_id,
                sampling=request.sampling.with_defaults(spec.defaults.to_domain()),
                messages=request.messages,
            ),
        )

    async def complete(self, request: CompletionRequest) -> Generation:
        request.validate()
        spec = self.registry.resolve(request.model)
        return await self._start(
            spec,
            GenerationRequest(
                request_id=request.request_id,
                sampling=request.sampling.with_defaults(spec.defaults.to_domain()),
                prompt=request.prompt,
            ),
        )

    async def _start(self, spec: ModelSpec, request: GenerationRequest) -> Generation:
        backend = await self.models.get(spec)
        return Generation(request_id=request.request_id, model=spec.name, chunks=backend.generate_stream(request))

    def list_models(self) -> list[ModelInfo]:
        return [self._info(spec) for spec in self.registry]

    def get_model(self, name: str) -> ModelInfo:
        return self._info(self.registry.resolve(name))

    def _info(self, spec: ModelSpec) -> ModelInfo:
        return ModelInfo(
            name=spec.name,
            backend=spec.backend,
            state=self.models.state(spec.name),
            aliases=spec.aliases,
            context_length=spec.context_length,
            is_default=spec.name == self.registry.default_model,
        )
