"""Inference use cases, independent of gRPC: resolve the model, validate, wait for it, generate."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator

from services.common import tracing
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, MeshError, NotFound
from services.common.registry import ModelSpec
from services.inference.api import (
    ChatRequest,
    Chunk,
    CompletionRequest,
    EmbeddingRequest,
    Embeddings,
    FinishReason,
    ModelInfo,
    QueueLine,
    ResponseFormat,
    SamplingParams,
    Setting,
    Usage,
    WaitUpdate,
)
from services.inference.backends import backend_class
from services.inference.backends.base import Backend
from services.inference.backends.grammar_builds import build_grammar
from services.inference.backends.managed.engine_log import known_log
from services.inference.generation import Generation, GenerationRequest
from services.inference.metrics import RequestTimer
from services.inference.server import pull, response_cache, tools
from services.inference.server.adapters import AdapterStore
from services.inference.server.model_manager import ModelManager
from services.inference.server.pull import PullProgress
from services.inference.server.settings_store import SettingsStore
from services.inference.server.slots import (
    PULLED_PREFIX,
    SETTING_KEYS,
    SLOTS,
    TIERS,
    ModelRouter,
    RoutingEnvironment,
    build_routes,
    effective_setting,
    require_known_key,
    validate_setting,
    with_pulled,
)


class InferenceEngine:
    def __init__(
        self,
        router: ModelRouter,
        models: ModelManager,
        store: SettingsStore,
        environment: RoutingEnvironment,
        responses: response_cache.ResponseCache | None = None,
        adapters: AdapterStore | None = None,
    ) -> None:
        self.router = router
        self.registry_file = router.registry  # the registry file's models; pulled ones are added on reload
        self.models = models
        self.store = store
        self.environment = environment
        self.responses = responses
        self.adapters = adapters
        self._adapter_locks: dict[tuple[int, str], asyncio.Lock] = {}

    # ---- generation ----

    async def chat(self, request: ChatRequest) -> Generation:
        request.validate()
        spec = self.router.resolve(request.model)
        backend = backend_class(spec.backend)
        if any(m.images for m in request.messages) and not backend.accepts_images(spec):
            raise InvalidArgument(
                f"Model '{spec.name}' ({spec.backend} backend) does not accept images.", param="messages"
            )
        response_format = request.response_format
        syntax = tools.syntax_for(spec.chat_template, spec.tool_syntax, backend.supports_framed_output)
        if request.uses_tools:
            if response_format.constrains:
                raise InvalidArgument("Combining 'tools' with a JSON response_format is not supported.", param="tools")
            response_format = syntax.reply_format(request.tools, request.tool_choice, request.parallel_tool_calls)
        await self._check_structured_output(spec, response_format, "tools" if request.uses_tools else "response_format")
        generation = GenerationRequest(
            request_id=request.request_id,
            sampling=request.sampling.with_defaults(SamplingParams(**spec.defaults.model_dump()).validate()),
            messages=syntax.prepare_messages(request.messages, request.tools, request.tool_choice),
            response_format=response_format,
            adapter=await self._check_adapter(spec, request.adapter, request.adapter_scale, request.tenant),
            adapter_scale=request.adapter_scale,
            logprobs=_checked_logprobs(spec, request.logprobs),
            low_priority=request.low_priority,
        )
        return await self._respond(
            spec, generation, request.model, request.cache, syntax if request.uses_tools else None, request.tenant
        )

    async def complete(self, request: CompletionRequest) -> Generation:
        request.validate()
        spec = self.router.resolve(request.model)
        await self._check_structured_output(spec, request.response_format, "response_format")
        generation = GenerationRequest(
            request_id=request.request_id,
            sampling=request.sampling.with_defaults(SamplingParams(**spec.defaults.model_dump()).validate()),
            prompt=request.prompt,
            response_format=request.response_format,
            adapter=await self._check_adapter(spec, request.adapter, request.adapter_scale, request.tenant),
            adapter_scale=request.adapter_scale,
            logprobs=_checked_logprobs(spec, request.logprobs),
            low_priority=request.low_priority,
            prompt_logprobs=request.prompt_logprobs,
        )
        if request.prompt_logprobs and not backend_class(spec.backend).supports_prompt_logprobs:
            raise InvalidArgument(
                f"Model '{spec.name}' ({spec.backend} backend) cannot score a prompt (echo with logprobs).",
                param="logprobs",
            )
        return await self._respond(spec, generation, request.model, request.cache, None, request.tenant)

    async def _respond(
        self,
        spec: ModelSpec,
        generation: GenerationRequest,
        route: str,
        cache: bool | None,
        syntax: tools.ToolSyntax | None,
        tenant: str,
    ) -> Generation:
        """From the response cache when the request is cacheable and was seen, else generated
        (and stored once it finishes)."""
        key = None
        if self.responses is not None and response_cache.cacheable(spec, cache, generation):
            key = response_cache.cache_key(spec, generation, tenant)
            if (cached := await self.responses.lookup(key, spec.name)) is not None:
                return Generation(generation.request_id, spec.name, response_cache.replay(cached))
        chunks = self._generate(spec, generation, route=route)
        if syntax is not None:
            chunks = _tool_replies(chunks, syntax.reader())
        if key is not None and self.responses is not None:
            chunks = self.responses.record(key, spec.name, chunks)
        return Generation(generation.request_id, spec.name, chunks)

    async def _check_structured_output(self, spec: ModelSpec, response_format: ResponseFormat, param: str) -> None:
        if response_format.constrains and not backend_class(spec.backend).supports_structured_output:
            raise InvalidArgument(
                f"Model '{spec.name}' ({spec.backend} backend) cannot constrain its output to JSON.", param=param
            )
        if response_format.constrains:
            schema = response_format.json_schema()  # within the schema budget (services/common/schema_limits.py)
            check = functools.partial(backend_class(spec.backend).check_schema, schema)
            try:
                await build_grammar(check, param)
            except InvalidArgument as error:
                raise InvalidArgument(error.message, param=param) from error

    async def _check_adapter(self, spec: ModelSpec, adapter: str, scale: float, tenant: str) -> str:
        """The adapter id, if the model can apply it (at this scale), the store has it and the
        tenant may use it."""
        if not adapter:
            return ""
        backend = backend_class(spec.backend)
        if not backend.supports_adapters:
            raise InvalidArgument(
                f"Model '{spec.name}' ({spec.backend} backend) cannot apply LoRA adapters per request.",
                param="adapter_settings",
            )
        if scale != 1.0 and not backend.supports_adapter_scale:
            raise InvalidArgument(
                f"Model '{spec.name}' ({spec.backend} backend) applies adapters at scale 1.0 only.",
                param="adapter_settings.scale",
            )
        if self.adapters is None:
            raise FailedPrecondition("This inference service has no adapter store.", param="adapter_settings")
        await self.adapters.resolve(adapter, tenant)
        return adapter

    async def _attach_adapter(self, backend: Backend, adapter: str) -> None:
        """Attach the adapter on first use (once, however many requests ask at the same time)."""
        if not adapter or adapter in backend.adapters:
            return
        assert self.adapters is not None
        lock = self._adapter_locks.setdefault((id(backend), adapter), asyncio.Lock())
        async with lock:
            if adapter not in backend.adapters:
                path = await self.adapters.resolve(adapter)
                try:
                    await backend.load_adapter(adapter, path)
                except MeshError:
                    raise
                except Exception as error:  # noqa: BLE001 - e.g. an adapter trained on another base
                    raise FailedPrecondition(
                        f"Adapter '{adapter}' cannot be applied to model '{backend.spec.name}': {error}",
                        param="adapter_settings.adapter_id",
                        reason="ADAPTER_INCOMPATIBLE",
                    ) from error

    async def _generate(self, spec: ModelSpec, request: GenerationRequest, route: str) -> AsyncIterator[Chunk]:
        """Wait for the model (reporting queue position and loading as chunks), then stream from it,
        timing each phase for the metrics. `route` is the name the request used (a slot or tier)."""
        timer = RequestTimer(
            {
                "model_name": spec.name,
                "backend": spec.backend,
                "slot": route if route in SLOTS else "",
                "tier": route if route in TIERS else "",
                "adapter": request.adapter,
            }
        )
        # Not made current: a context attached inside a generator cannot be detached safely once
        # the generator is closed from elsewhere.
        span = tracing.tracer().start_span(
            "generate", attributes={"llmmesh.model": spec.name, "llmmesh.backend": spec.backend}
        )
        try:
            async for chunk in self._wait_and_generate(spec, request, timer):
                timer.on_chunk(chunk)
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            timer.finish("abort")
            raise
        except Exception:
            timer.finish("error")
            raise
        finally:
            timer.finish("abort")  # the consumer stopped reading before the last chunk
            span.end()

    async def _wait_and_generate(
        self, spec: ModelSpec, request: GenerationRequest, timer: RequestTimer
    ) -> AsyncIterator[Chunk]:
        updates: asyncio.Queue[WaitUpdate] = asyncio.Queue()
        acquiring = asyncio.ensure_future(self.models.acquire(spec, on_wait=updates.put_nowait))
        try:
            while not acquiring.done():
                update = asyncio.ensure_future(updates.get())
                try:
                    await asyncio.wait({acquiring, update}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    update.cancel()
                if update.done() and not update.cancelled():
                    yield Chunk(text="", wait_status=update.result())
            lease = acquiring.result()
            timer.on_scheduled()
        except BaseException:
            acquiring.cancel()
            if acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None:
                acquiring.result().release()  # admitted just as the caller left
            raise
        try:
            await self._attach_adapter(lease.backend, request.adapter)
            async with contextlib.aclosing(lease.backend.generate_stream(request)) as chunks:  # type: ignore[type-var]
                # The prompt's size goes out with the first token, where the backend has a tokenizer
                # (Anthropic's message_start shows it; a stream cut short is still charged for it).
                # Counted before generation starts, so never alongside this request's own decoding.
                prompt_tokens = None
                if type(lease.backend).count_tokens is not Backend.count_tokens:
                    prompt_tokens = await lease.backend.count_tokens(request)
                async for chunk in chunks:
                    if prompt_tokens is not None and chunk.usage is None:
                        chunk = dataclasses.replace(chunk, usage=Usage(prompt_tokens, 0))
                    prompt_tokens = None
                    yield chunk
        finally:
            lease.release()

    # ---- models ----

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Vectors from a model whose backend serves embeddings, queued and loaded like generation."""
        request.validate()
        spec = self.router.resolve(request.model)
        lease = await self.models.acquire(spec)
        try:
            vectors, tokens = await lease.backend.embed(request.texts)
        finally:
            lease.release()
        return Embeddings(spec.name, tuple(tuple(vector) for vector in vectors), tokens)

    async def count_tokens(self, request: ChatRequest) -> tuple[str, int]:
        """The model's name, and the tokens the request's prompt takes there (tools included),
        counted by its backend's own tokenizer; loaded and queued like generation."""
        request.validate()
        spec = self.router.resolve(request.model)
        syntax = tools.syntax_for(
            spec.chat_template, spec.tool_syntax, backend_class(spec.backend).supports_framed_output
        )
        generation = GenerationRequest(
            request_id=request.request_id,
            sampling=request.sampling,
            messages=syntax.prepare_messages(request.messages, request.tools, request.tool_choice),
        )
        lease = await self.models.acquire(spec)
        try:
            return spec.name, await lease.backend.count_tokens(generation)
        finally:
            lease.release()

    def list_models(self) -> list[ModelInfo]:
        return [self._info(spec) for spec in self.router.specs()]

    def get_model(self, name: str) -> ModelInfo:
        return self._info(self.router.resolve(name))

    def _info(self, spec: ModelSpec) -> ModelInfo:
        return ModelInfo(
            name=spec.name,
            backend=spec.backend,
            state=self.models.state(spec),
            aliases=(*spec.aliases, *self.router.routes_to(spec)),
            context_length=spec.context_length,
            is_default=spec.name == self.router.registry.default_model,
            memory_mb=spec.memory_mb,
            requests_running=self.models.running(spec),
            supports_images=backend_class(spec.backend).accepts_images(spec),
        )

    def queue(self) -> list[QueueLine]:
        return self.models.queue(self.router.specs())

    async def load_model(self, name: str) -> ModelInfo:
        spec = self.router.resolve(name)
        await self.models.load(spec)
        return self._info(spec)

    async def unload_model(self, name: str) -> ModelInfo:
        spec = self.router.resolve(name)
        await self.models.unload(spec)
        return self._info(spec)

    async def pull_model(self, repo: str, file: str, revision: str, name: str) -> AsyncIterator[PullProgress]:
        """Download a GGUF model from the Hub and add it to the registry (kept in the settings store,
        so it survives restarts); progress as it goes, the new model's info last."""
        if name and (spec := self.registry_file.find(name)) is not None:
            raise AlreadyExists(f"'{name}' is a model of the registry file already ({spec.path}).", param="name")
        async for step in pull.pull(repo, file, revision, name):
            if step.spec is not None:
                if self.registry_file.find(step.spec.name) is not None:
                    raise AlreadyExists(f"'{step.spec.name}' is a registry model already; pass 'name'.", param="name")
                await self.store.put(PULLED_PREFIX + step.spec.name, step.spec.model_dump_json(exclude_defaults=True))
                await self.reload()
            yield step

    async def unload_models(self) -> list[str]:
        return await self.models.unload_all()

    def model_log(self, name: str) -> AsyncIterator[str]:
        """The output of the model's managed engine (kept across restarts), followed live."""
        spec = self.router.resolve(name)
        engine_output = known_log(spec.name)
        if engine_output is None:
            raise NotFound(
                f"Model '{spec.name}' has no engine log: its backend ({spec.backend}) runs in-process, "
                "or its engine never started.",
                param="name",
            )
        return engine_output.follow()

    async def reload(self) -> list[str]:
        """Re-read the settings (pulled models included) and re-route; unload models that no name
        reaches any more."""
        stored = {key: setting.value for key, setting in (await self.store.all()).items()}
        self.router.registry = with_pulled(self.registry_file, stored)
        self.router.update(build_routes(self.router.registry, stored, self.environment))
        return await self.models.unload_unreferenced({spec.instance_key for spec in self.router.specs()})

    # ---- settings ----

    async def list_settings(self) -> list[Setting]:
        stored = await self.store.all()
        return [
            Setting(
                key=key,
                value=stored[key].value if key in stored else "",
                description=description,
                updated_at=stored[key].updated_at.isoformat() if key in stored else "",
                effective_value=effective_setting(key, self.router.routes, self.router.registry),
            )
            for key, description in SETTING_KEYS.items()
        ]

    async def update_setting(self, key: str, value: str) -> Setting:
        """Store a setting; an empty value deletes it. Takes effect on the next reload."""
        if not value.strip():
            require_known_key(key)
            await self.store.delete(key)
            return Setting(key=key, value="", description=SETTING_KEYS[key])
        stored = await self.store.put(key, validate_setting(key, value, self.router.registry))
        return Setting(key, stored.value, SETTING_KEYS[key], stored.updated_at.isoformat())


def _checked_logprobs(spec: ModelSpec, logprobs: int | None) -> int | None:
    if logprobs is not None and not backend_class(spec.backend).supports_logprobs:
        raise InvalidArgument(
            f"Model '{spec.name}' ({spec.backend} backend) cannot return logprobs; gguf and transformers models can.",
            param="logprobs",
        )
    return logprobs


async def _tool_replies(chunks: AsyncIterator[Chunk], reader: tools.ReplyReader) -> AsyncIterator[Chunk]:
    """Turn a tool-aware reply into call deltas as the calls are generated (and prose as prose),
    ending with the whole calls, or the content, and the finish reason."""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            if chunk.wait_status is not None:
                yield chunk
                continue
            text, deltas = reader.feed(chunk.text)
            early_usage = chunk.usage if chunk.finish_reason is None else None  # the prompt's, on the first
            if text or deltas or chunk.logprobs or early_usage:
                yield Chunk(text=text, tool_call_deltas=deltas, logprobs=chunk.logprobs, usage=early_usage)
            if chunk.finish_reason is None:
                continue
            cut = chunk.finish_reason is FinishReason.LENGTH
            content, calls = reader.finish(cut)  # cut: the calls so far, as their deltas streamed them
            if content:
                yield Chunk(text=content)
            finish = FinishReason.LENGTH if cut else FinishReason.TOOL_CALLS if calls else FinishReason.STOP
            yield Chunk(text="", finish_reason=finish, usage=chunk.usage, tool_calls=calls)
            return
