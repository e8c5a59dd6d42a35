"""What every OpenAI endpoint shares: the base model, sampling fields, response formats,
usage and ids."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common import sampling
from services.common.errors import InvalidArgument
from services.gateway.config import GatewaySettings
from services.inference.api import MAX_TOP_LOGPROBS, ResponseFormat, ResponseFormatKind, SamplingParams, Usage

# Bounds of the protobuf integer fields these values travel in: larger ones are a 400, not a crash.
INT32_MAX, INT64_MIN, INT64_MAX = sampling.INT32_MAX, sampling.INT64_MIN, sampling.INT64_MAX


class OpenAIModel(BaseModel):
    # Unknown fields are ignored, as vLLM does: SDKs and frameworks send extras.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(OpenAIModel):
    include_usage: bool = False


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
    # mesh extension: the fleet node that must answer (also written `model@node`)
    node: str | None = Field(None, min_length=1, max_length=64)
    # Extensions, named as in vLLM and llama.cpp's server.
    top_k: int | None = sampling.BOUNDS["top_k"].field()
    min_p: float | None = sampling.BOUNDS["min_p"].field()
    repeat_penalty: float | None = sampling.BOUNDS["repeat_penalty"].field()
    # Not supported yet; rejected when set rather than ignored.
    logit_bias: dict[str, float] | None = None

    def sampling(self) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        scalars = {name: getattr(self, name) for name in sampling.NAMES if name != "stop"}
        return SamplingParams(**scalars, stop=stop).validate()

    def reject_unsupported(self, max_choices: int) -> None:
        if self.n > max_choices:
            raise InvalidArgument(f"'n' must be at most {max_choices}; got {self.n}.", param="n")
        if self.logit_bias:
            raise InvalidArgument("'logit_bias' is not supported yet.", param="logit_bias")

    def check_limits(self, settings: GatewaySettings) -> None:
        """The configured input caps, answered with 400 before anything reaches a backend."""
        if self.max_tokens is not None and self.max_tokens > settings.max_tokens_cap:
            raise InvalidArgument(
                f"'max_tokens' must be at most {settings.max_tokens_cap}; got {self.max_tokens}.", param="max_tokens"
            )

    @property
    def include_usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


# The most alternatives per token `top_logprobs` (chat) and `logprobs` (completions) may ask for.
TOP_LOGPROBS_FIELD = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# OpenAPI: with "stream": true the same operation answers with server-sent events instead.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string", "description": "data: {chunk}"}}}}
}


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens served from a cache


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


def usage_body(usages: list[Usage], choices_per_prompt: int) -> UsageOut:
    """Usage of all choices, in choice order: each prompt counts once, completions add up."""
    prompt_tokens = sum(u.prompt_tokens for u in usages[::choices_per_prompt])
    completion_tokens = sum(u.completion_tokens for u in usages)
    cached = sum(u.cached_prompt_tokens for u in usages[::choices_per_prompt])
    return UsageOut(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


class ChoiceOut(BaseModel):
    """What every choice of a whole reply has (each reply adds its own `logprobs` shape)."""

    index: int
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]


class ReplyOut(BaseModel):
    """What every whole (non-streamed) reply has, in OpenAI's shape and field order (each
    reply narrows `object` and `choices`)."""

    id: str
    object: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: Sequence[ChoiceOut]
    usage: UsageOut
