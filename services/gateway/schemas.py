"""OpenAI wire models, and their one mapping to the inference contract.

Requests map to the inference domain (`to_domain`), which owns the mapping to
protobuf; responses are built from domain chunks. Nothing here duplicates a
protobuf message by hand.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.fields import FieldInfo

from llmmesh.trainer.v1 import trainer_service_pb2 as trainer_pb
from services.common import sampling
from services.common.errors import InvalidArgument
from services.gateway.config import GatewaySettings
from services.inference.client import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    FinishReason,
    Image,
    ModelInfo,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)
from services.trainer.client import Hyperparameters

# Bounds of the protobuf integer fields these values travel in: larger ones are a 400, not a crash.
INT32_MAX, INT64_MIN, INT64_MAX = sampling.INT32_MAX, sampling.INT64_MIN, sampling.INT64_MAX

_ROLES: dict[str, Role] = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,  # OpenAI's newer name for system instructions
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}


class OpenAIModel(BaseModel):
    # Unknown fields are ignored, as vLLM does: SDKs and frameworks send extras.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIModel):
    url: str = Field(min_length=1)


class ImagePart(OpenAIModel):
    type: Literal["image_url"]
    image_url: ImageURL


class OtherPart(OpenAIModel):
    type: str


class FunctionCallIn(OpenAIModel):
    name: str
    arguments: str = "{}"


class ToolCallIn(OpenAIModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart | OtherPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def to_domain(self, index: int) -> ChatMessage:
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ())
        if not isinstance(self.content, list):
            return ChatMessage(
                role=_ROLES[self.role],
                content=self.content or "",
                name=self.name or "",
                tool_calls=calls,
                tool_call_id=self.tool_call_id or "",
            )
        for part in self.content:
            if not isinstance(part, TextPart | ImagePart):
                raise InvalidArgument(
                    f"Content parts of type '{part.type}' are not supported; send text and image_url parts.",
                    param=f"messages.{index}.content",
                )
        return ChatMessage(
            role=_ROLES[self.role],
            content="".join(part.text for part in self.content if isinstance(part, TextPart)),
            name=self.name or "",
            images=tuple(Image(url=p.image_url.url) for p in self.content if isinstance(p, ImagePart)),
            tool_calls=calls,
            tool_call_id=self.tool_call_id or "",
        )


class JsonSchemaIn(OpenAIModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None

    def to_domain(self) -> ResponseFormat:
        if self.type == "json_schema":
            if self.json_schema is None:
                raise InvalidArgument("response_format json_schema needs 'json_schema'.", param="response_format")
            schema = json.dumps(self.json_schema.schema_)
            return ResponseFormat(ResponseFormatKind.JSON_SCHEMA, schema, self.json_schema.name)
        return ResponseFormat(ResponseFormatKind(self.type))


class FunctionIn(OpenAIModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(OpenAIModel):
    type: Literal["function"]
    function: FunctionIn

    def to_domain(self) -> Tool:
        parameters = json.dumps(self.function.parameters) if self.function.parameters is not None else ""
        return Tool(self.function.name, self.function.description or "", parameters)


class NamedFunction(OpenAIModel):
    name: str


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    function: NamedFunction


def _tool_choice(choice: Literal["none", "auto", "required"] | NamedToolChoice | None) -> ToolChoice:
    if choice is None:
        return ToolChoice()
    if isinstance(choice, NamedToolChoice):
        return ToolChoice(ToolChoiceMode.FUNCTION, choice.function.name)
    return ToolChoice(ToolChoiceMode(choice))


class AdapterSettingsIn(OpenAIModel):
    """The design documents' `adapter_settings`: which LoRA adapter answers the request."""

    adapter_id: str = Field(min_length=1, max_length=128)
    scale: float = Field(1.0, ge=0.0, le=2.0, description="1.0 as trained; 0 the base alone")


class SamplingFields(OpenAIModel):
    """Sampling parameters shared by chat and completions, with OpenAI's bounds."""

    # Bounds from their one declaration (services/common/sampling.py).
    temperature: float | None = sampling.BOUNDS["temperature"].field()
    top_p: float | None = sampling.BOUNDS["top_p"].field()
    max_tokens: int | None = sampling.BOUNDS["max_tokens"].field()
    stop: str | list[str] | None = None
    seed: int | None = sampling.seed_field()
    presence_penalty: float | None = sampling.BOUNDS["presence_penalty"].field()
    frequency_penalty: float | None = sampling.BOUNDS["frequency_penalty"].field()
    n: int = Field(1, ge=1, le=INT32_MAX)
    # mesh extensions: the response cache for this request (deterministic requests only),
    # and the LoRA adapter that answers it
    cache: bool | None = None
    adapter_settings: AdapterSettingsIn | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions, named as in vLLM and llama.cpp's server.
    top_k: int | None = sampling.BOUNDS["top_k"].field()
    min_p: float | None = sampling.BOUNDS["min_p"].field()
    repeat_penalty: float | None = sampling.BOUNDS["repeat_penalty"].field()
    # Not supported yet; rejected when set rather than ignored.
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None

    def sampling(self) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            max_tokens=self.max_tokens,
            stop=stop,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repeat_penalty=self.repeat_penalty,
        ).validate()

    def reject_unsupported(self, max_choices: int) -> None:
        if self.n > max_choices:
            raise InvalidArgument(f"'n' must be at most {max_choices}; got {self.n}.", param="n")
        for name in ("logprobs", "logit_bias"):
            if getattr(self, name):
                raise InvalidArgument(f"'{name}' is not supported yet.", param=name)

    def check_limits(self, settings: GatewaySettings) -> None:
        """The configured input caps, answered with 400 before anything reaches a backend."""
        if self.max_tokens is not None and self.max_tokens > settings.max_tokens_cap:
            raise InvalidArgument(
                f"'max_tokens' must be at most {settings.max_tokens_cap}; got {self.max_tokens}.", param="max_tokens"
            )

    @property
    def include_usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    tools: list[ToolIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormatIn | None = None

    @model_validator(mode="after")
    def _newer_max_tokens_name(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self

    def check_limits(self, settings: GatewaySettings) -> None:
        super().check_limits(settings)
        if len(self.messages) > settings.max_messages:
            raise InvalidArgument(
                f"At most {settings.max_messages} messages per request; got {len(self.messages)}.", param="messages"
            )

    def to_domain(self, max_choices: int) -> list[ChatRequest]:
        """One inference request per choice (`n`)."""
        self.reject_unsupported(max_choices)
        messages = tuple(m.to_domain(i) for i, m in enumerate(self.messages))
        sampling = self.sampling()
        return [
            ChatRequest(
                model=self.model,
                messages=messages,
                sampling=sampling,
                response_format=self.response_format.to_domain() if self.response_format else ResponseFormat(),
                tools=tuple(tool.to_domain() for tool in self.tools or ()),
                tool_choice=_tool_choice(self.tool_choice),
                parallel_tool_calls=self.parallel_tool_calls,
                cache=self.cache,
                adapter=self.adapter_settings.adapter_id if self.adapter_settings else "",
                adapter_scale=self.adapter_settings.scale if self.adapter_settings else 1.0,
            )
            for _ in range(self.n)
        ]


class CompletionRequestIn(SamplingFields):
    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    response_format: ResponseFormatIn | None = None

    def to_domain(self, max_choices: int) -> list[CompletionRequest]:
        """One inference request per prompt and choice, in OpenAI's choice order."""
        self.reject_unsupported(max_choices)
        for name in ("echo", "suffix"):
            if getattr(self, name):
                raise InvalidArgument(f"'{name}' is not supported yet.", param=name)
        if self.best_of not in (None, 1, self.n):
            raise InvalidArgument("'best_of' other than n is not supported.", param="best_of")
        raw = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        prompts = [p for p in raw if isinstance(p, str)]
        if not prompts or len(prompts) != len(raw):
            raise InvalidArgument(
                "'prompt' must be a string or a non-empty list of strings; token ids are not supported.", param="prompt"
            )
        if len(prompts) * self.n > max_choices:
            raise InvalidArgument(f"At most {max_choices} prompts times n are allowed per request.", param="prompt")
        sampling = self.sampling()
        response_format = self.response_format.to_domain() if self.response_format else ResponseFormat()
        return [
            CompletionRequest(
                model=self.model,
                prompt=p,
                sampling=sampling,
                response_format=response_format,
                cache=self.cache,
                adapter=self.adapter_settings.adapter_id if self.adapter_settings else "",
                adapter_scale=self.adapter_settings.scale if self.adapter_settings else 1.0,
            )
            for p in prompts
            for _ in range(self.n)
        ]


# ---- responses ----


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage_body(usages: list[Usage], choices_per_prompt: int) -> dict[str, Any]:
    """Usage of all choices, in choice order: each prompt counts once, completions add up."""
    prompt_tokens = sum(u.prompt_tokens for u in usages[::choices_per_prompt])
    completion_tokens = sum(u.completion_tokens for u in usages)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        # OpenAI's field for prompt tokens served from a cache
        "prompt_tokens_details": {"cached_tokens": sum(u.cached_prompt_tokens for u in usages[::choices_per_prompt])},
    }


def tool_calls_body(calls: tuple[ToolCall, ...], with_index: bool = False) -> list[dict[str, Any]]:
    return [
        {
            **({"index": index} if with_index else {}),
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for index, call in enumerate(calls)
    ]


def tool_call_delta_body(delta: ToolCallDelta) -> dict[str, Any]:
    if delta.name:
        return {
            "index": delta.index,
            "id": delta.id,
            "type": "function",
            "function": {"name": delta.name, "arguments": delta.arguments},
        }
    return {"index": delta.index, "function": {"arguments": delta.arguments}}


def chat_completion_body(
    completion_id: str,
    model: str,
    choices: list[tuple[str, FinishReason, tuple[ToolCall, ...]]],
    usage: dict[str, int],
) -> dict[str, Any]:
    def message(text: str, calls: tuple[ToolCall, ...]) -> dict[str, Any]:
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": tool_calls_body(calls)}
        return {"role": "assistant", "content": text}

    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": index, "message": message(text, calls), "finish_reason": reason.value, "logprobs": None}
            for index, (text, reason, calls) in enumerate(choices)
        ],
        "usage": usage,
    }


def completion_body(
    completion_id: str, model: str, choices: list[tuple[str, FinishReason]], usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": index, "text": text, "finish_reason": reason.value, "logprobs": None}
            for index, (text, reason) in enumerate(choices)
        ],
        "usage": usage,
    }


def model_body(model: ModelInfo) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": "llmmesh",
        # Mesh extensions: clients that don't know them ignore them.
        "type": "chat",
        "backend": model.backend,
        "state": model.state.value,
        "aliases": list(model.aliases),
        "context_length": model.context_length,
        "is_default": model.is_default,
        "memory_mb": model.memory_mb,
        "requests_running": model.requests_running,
    }


# ---- adapter training (the scheduler's adapter_train jobs, the pipeline) ----


class ChatExampleIn(OpenAIModel):
    messages: list[ChatMessageIn] = Field(min_length=2)


class InstructionExampleIn(OpenAIModel):
    instruction: str
    input: str = ""
    output: str


def all_optional(model: type[BaseModel]) -> type[OpenAIModel]:
    """`model`'s fields, with their bounds, each optional: unset takes the service's default."""
    fields: dict[str, Any] = {
        name: (Optional[info.annotation], FieldInfo.merge_field_infos(info, default=None))  # noqa: UP045
        for name, info in model.model_fields.items()
    }
    return create_model(f"{model.__name__}In", __base__=OpenAIModel, **fields)


class HyperparametersIn(all_optional(Hyperparameters)):  # type: ignore[misc]
    """The trainer's Hyperparameters (their one declaration), each optional."""

    def to_pb(self) -> trainer_pb.Hyperparameters:
        return trainer_pb.Hyperparameters(**self.model_dump(exclude_none=True))


Dataset = list[ChatExampleIn | InstructionExampleIn] | str


class TrainAdapterIn(OpenAIModel):
    """An adapter_train job's request: the trainer's TrainAdapterRequest in JSON. A dataset is a
    list of examples ({"messages": [...]} or {"instruction", "input", "output"}) or an s3:// URI."""

    base_model: str
    dataset: Dataset
    eval_dataset: Dataset | None = None
    hyperparameters: HyperparametersIn = Field(default_factory=HyperparametersIn)

    def to_pb(self, training_id: str = "") -> trainer_pb.TrainAdapterRequest:
        return trainer_pb.TrainAdapterRequest(
            base_model=self.base_model,
            dataset=_dataset_pb(self.dataset, "dataset"),
            eval_dataset=_dataset_pb(self.eval_dataset, "eval_dataset") if self.eval_dataset else None,
            hyperparameters=self.hyperparameters.to_pb(),
            training_id=training_id,
        )


def _dataset_pb(dataset: Dataset, param: str) -> trainer_pb.Dataset:
    if isinstance(dataset, str):
        return trainer_pb.Dataset(uri=dataset)
    examples = []
    for example in dataset:
        if isinstance(example, ChatExampleIn):
            messages = [m.to_domain(i).to_pb() for i, m in enumerate(example.messages)]
            examples.append(trainer_pb.TrainingExample(chat=trainer_pb.ChatExample(messages=messages)))
        else:
            item = trainer_pb.InstructionExample(
                instruction=example.instruction, input=example.input, output=example.output
            )
            examples.append(trainer_pb.TrainingExample(instruction=item))
    if not examples:
        raise InvalidArgument(f"'{param}' has no examples.", param=param)
    return trainer_pb.Dataset(inline=trainer_pb.Examples(examples=examples))


class PipelineBuildIn(OpenAIModel):
    """A build: the base model, a seed file (records, JSONL text or an s3:// URI; see
    services/trainer/seeds.py for its lines) and training hyperparameters."""

    base_model: str
    seed: list[dict[str, Any]] | None = None
    seed_jsonl: str | None = None
    seed_uri: str | None = None
    hyperparameters: HyperparametersIn = Field(default_factory=HyperparametersIn)
    eval_fraction: float | None = Field(None, gt=0, lt=1)
    split_seed: int = Field(0, ge=0, le=INT32_MAX)

    def to_pb(self) -> trainer_pb.BuildPipelineRequest:
        sources = [s for s in (self.seed, self.seed_jsonl, self.seed_uri) if s is not None]
        if len(sources) != 1:
            raise InvalidArgument("Give exactly one of 'seed', 'seed_jsonl' or 'seed_uri'.", param="seed")
        request = trainer_pb.BuildPipelineRequest(
            base_model=self.base_model,
            hyperparameters=self.hyperparameters.to_pb(),
            split_seed=self.split_seed,
        )
        if self.eval_fraction is not None:
            request.eval_fraction = self.eval_fraction
        if self.seed_uri is not None:
            request.seed_uri = self.seed_uri
        else:
            request.seed_jsonl = self.seed_jsonl or "\n".join(json.dumps(record) for record in self.seed or ())
        return request
