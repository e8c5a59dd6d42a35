"""OpenAI wire models, and their one mapping to the inference contract.

Requests map to the inference domain (`to_domain`), which owns the mapping to
protobuf; responses are built from domain chunks. Nothing here duplicates a
protobuf message by hand.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.errors import InvalidArgument
from services.inference.domain import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    FinishReason,
    Image,
    ModelInfo,
    Role,
    SamplingParams,
    Usage,
)

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


class ChatMessageIn(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart | OtherPart] | None = None
    name: str | None = None

    def to_domain(self, index: int) -> ChatMessage:
        if not isinstance(self.content, list):
            return ChatMessage(role=_ROLES[self.role], content=self.content or "", name=self.name or "")
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
        )


class SamplingFields(OpenAIModel):
    """Sampling parameters shared by chat and completions, with OpenAI's bounds."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions, named as in vLLM and llama.cpp's server.
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
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

    @property
    def include_usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _newer_max_tokens_name(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self

    def to_domain(self, max_choices: int) -> list[ChatRequest]:
        """One inference request per choice (`n`)."""
        self.reject_unsupported(max_choices)
        if self.tools:
            raise InvalidArgument("'tools' is not supported yet.", param="tools")
        if self.response_format and self.response_format.get("type") != "text":
            raise InvalidArgument("Only response_format type 'text' is supported yet.", param="response_format")
        messages = tuple(m.to_domain(i) for i, m in enumerate(self.messages))
        sampling = self.sampling()
        return [ChatRequest(model=self.model, messages=messages, sampling=sampling) for _ in range(self.n)]


class CompletionRequestIn(SamplingFields):
    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

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
        return [
            CompletionRequest(model=self.model, prompt=p, sampling=sampling) for p in prompts for _ in range(self.n)
        ]


# ---- responses ----


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage_body(usages: list[Usage], choices_per_prompt: int) -> dict[str, int]:
    """Usage of all choices, in choice order: each prompt counts once, completions add up."""
    prompt_tokens = sum(u.prompt_tokens for u in usages[::choices_per_prompt])
    completion_tokens = sum(u.completion_tokens for u in usages)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion_body(
    completion_id: str, model: str, choices: list[tuple[str, FinishReason]], usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason.value,
                "logprobs": None,
            }
            for index, (text, reason) in enumerate(choices)
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
